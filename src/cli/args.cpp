// Flag parsing for the `mhc` subcommands (see args.h).
#include "args.h"

#include <iostream>
#include <sstream>
#include <stdexcept>

namespace mhc::cli {

Args& Args::flag(const std::string& name, const std::string& default_value, const std::string& help) {
  order_.push_back(name);
  flags_[name] = {default_value, help, false};
  return *this;
}

Args& Args::toggle(const std::string& name, const std::string& help) {
  order_.push_back(name);
  flags_[name] = {"false", help, true};
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
    auto it = flags_.find(name);
    if (it == flags_.end()) {
      std::string known;
      for (const auto& k : order_) known += (known.empty() ? "--" : ", --") + k;
      throw std::invalid_argument(command_ + ": unknown flag --" + name + " (accepted: " + known + ")");
    }
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

bool Args::on(const std::string& name) const { return get(name).value == "true"; }

int64_t Args::integer(const std::string& name, int64_t min, int64_t max) const {
  return parse_integer("--" + name, get(name).value, min, max);
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

int64_t parse_integer(const std::string& flag, const std::string& text, int64_t min, int64_t max) {
  size_t used = 0;
  int64_t v = 0;
  try {
    v = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size() || v < min || v > max)
    throw std::invalid_argument(flag + " must be a whole number in [" + std::to_string(min) + ", " +
                                std::to_string(max) + "], got '" + text + "'");
  return v;
}

}  // namespace mhc::cli
