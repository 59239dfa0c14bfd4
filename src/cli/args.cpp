// Flag parsing for the `mhc` subcommands (see args.h).
#include "args.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iostream>
#include <sstream>
#include <stdexcept>

namespace mhc::cli {

Args& Args::flag(const std::string& name, const std::string& default_value, const std::string& help, ValueRange range) {
  order_.push_back(name);
  flags_[name] = {default_value, help, false, range};
  return *this;
}

Args& Args::toggle(const std::string& name, const std::string& help) {
  order_.push_back(name);
  flags_[name] = {"false", help, true, {}};
  return *this;
}

Args& Args::alias(const std::string& old_name, const std::string& name) {
  get(name);
  aliases_[old_name] = name;
  return *this;
}

bool Args::parse(const std::vector<std::string>& argv) {
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    if (a == "--help" || a == "-h") {
      std::cout << help();
      return false;
    }
    if (a.rfind("--", 0) != 0) throw std::invalid_argument(command_ + ": unexpected argument '" + a + "' (flags start with --; see --help)");
    std::string name = a.substr(2), value;
    const auto eq = name.find('=');
    const bool inline_value = eq != std::string::npos;
    if (inline_value) value = name.substr(eq + 1), name = name.substr(0, eq);
    if (const auto alias = aliases_.find(name); alias != aliases_.end()) name = alias->second;
    auto it = flags_.find(name);
    if (it == flags_.end()) throw std::invalid_argument(command_ + ": " + unknown_flag_message(name));
    given_.insert(name);
    if (it->second.is_toggle) {
      if (inline_value) throw std::invalid_argument(command_ + ": --" + name + " takes no value");
      it->second.value = "true";
      continue;
    }
    if (!inline_value) {
      if (i + 1 >= argv.size()) throw std::invalid_argument(command_ + ": --" + name + " needs a value");
      value = argv[++i];
    }
    it->second.value = value;
  }
  return true;
}

const Args::Flag& Args::get(const std::string& name) const {
  auto it = flags_.find(name);
  if (it == flags_.end()) throw std::logic_error("flag --" + name + " was never declared");
  return it->second;
}

std::string Args::str(const std::string& name) const { return get(name).value; }

void Args::set(const std::string& name, const std::string& value) {
  get(name);
  flags_[name].value = value;
}

std::string Args::unknown_flag_message(const std::string& name, const std::string& prefix) const {
  // Levenshtein distance: a near miss (a typo, a dropped dash) gets one suggestion.
  auto distance = [](const std::string& a, const std::string& b) {
    std::vector<size_t> row(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
      size_t diagonal = row[0];
      row[0] = i;
      for (size_t j = 1; j <= b.size(); ++j) {
        const size_t up = row[j];
        row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1])});
        diagonal = up;
      }
    }
    return row[b.size()];
  };
  std::string best, known;
  size_t best_distance = SIZE_MAX;
  for (const auto& k : order_) {
    known += (known.empty() ? prefix : ", " + prefix) + k;
    // A prefix either way ("--sinkhorn" for "--sinkhorn-iters") counts as a near miss.
    const bool prefix_match = name.size() >= 3 && (k.rfind(name, 0) == 0 || name.rfind(k, 0) == 0);
    const size_t d = prefix_match ? 1 : distance(name, k);
    if (d < best_distance) best_distance = d, best = k;
  }
  const std::string head = "unknown " + std::string(prefix.empty() ? "key " : "flag ") + prefix + name;
  if (best_distance <= std::max<size_t>(2, name.size() / 3)) return head + " (did you mean " + prefix + best + "?)";
  return head + " (accepted: " + known + ")";
}

double Args::real(const std::string& name) const { return parse_real("--" + name, get(name).value, get(name).range); }

bool Args::on(const std::string& name) const { return get(name).value == "true"; }

int64_t Args::integer(const std::string& name) const {
  return parse_integer("--" + name, get(name).value, get(name).range);
}

std::vector<int64_t> Args::integers(const std::string& name) const {
  std::vector<int64_t> out;
  for (const std::string& item : list(name)) out.push_back(parse_integer("--" + name, item, get(name).range));
  return out;
}

std::vector<std::string> Args::list(const std::string& name) const {
  std::vector<std::string> out;
  std::stringstream ss(get(name).value);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  if (out.empty()) throw std::invalid_argument(command_ + ": --" + name + " needs at least one value");
  return out;
}

std::string Args::help() const {
  std::ostringstream s;
  s << "usage: " << command_ << " [flags]\n" << summary_ << "\n\nflags:\n";
  for (const auto& k : order_) {
    const Flag& f = flags_.at(k);
    std::string left = "  --" + k + (f.is_toggle ? "" : " " + (f.value.empty() ? std::string("VALUE") : f.value));
    if (left.size() < 30) left.resize(30, ' ');
    s << left << " " << f.help << "\n";
  }
  return s.str();
}

}  // namespace mhc::cli
