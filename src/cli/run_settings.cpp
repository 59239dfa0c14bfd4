// How the `mhc` commands turn their flags into a run's settings (the defaults < the preset <
// --config TOML < the flags, or a checkpoint's settings when resuming), guard run folders, and find
// the trained run that sample, eval and analyze read (run_settings.h).
#include "run_settings.h"

#include <algorithm>
#include <filesystem>

#include "mhc/checkpoint.h"
#include "mhc/files.h"

namespace fs = std::filesystem;

namespace mhc::cli {

namespace {

using train::Settings;

bool same_value(const train::SettingSpec& spec, const std::string& a, const std::string& b) {
  try {
    if (std::holds_alternative<IntegerRange>(spec.range)) return std::stoll(a) == std::stoll(b);
    if (std::holds_alternative<RealRange>(spec.range)) return std::stod(a) == std::stod(b);
  } catch (const std::exception&) {
  }
  return a == b;
}

std::string preset_names() {
  std::string names;
  for (const auto& [name, values] : train::presets()) names += (names.empty() ? "" : ", ") + name;
  return names;
}

}  // namespace

const std::map<std::string, std::string>& preset_values(const std::string& command, const std::string& name) {
  const auto preset = train::presets().find(name);
  if (preset == train::presets().end())
    throw std::invalid_argument(command + ": unknown --preset '" + name + "' (accepted: " + preset_names() + ")");
  return preset->second;
}

void declare_training_flags(Args& a) {
  a.flag("preset", "tiny", "starting settings: " + preset_names() + " (the defaults below are tiny's)");
  a.flag("config", "", "a TOML file of settings, applied over the preset");
  for (const auto& spec : train::setting_specs()) {
    a.flag(spec.name, spec.default_value, spec.help, spec.range);
    if (!spec.old_name.empty()) a.alias(spec.old_name, spec.name);
  }
}

Settings fresh_settings(const Args& a, const std::map<std::string, std::string>& overrides) {
  const std::map<std::string, std::string>& preset = preset_values(a.command(), a.str("preset"));
  Settings s;
  for (const auto& spec : train::setting_specs()) s.values[spec.name] = a.str(spec.name);
  std::map<std::string, std::string> layered = preset;
  if (!a.str("config").empty())
    for (const auto& [k, v] : train::read_toml(a.str("config"))) layered[k] = v;
  for (const auto& [k, v] : layered)
    if (!a.given(k)) s.values[k] = v;
  for (const auto& [k, v] : overrides) s.values[k] = v;
  // The plain residual has one stream by definition; only an explicit --streams can contradict it.
  if (s.str("variant") == "residual" && !a.given("streams")) s.values["streams"] = "1";
  s.require_utf8();
  return s;
}

std::string differences(const Settings& checkpoint, const Settings& given, const std::vector<std::string>& names) {
  std::string out;
  for (const auto& spec : train::setting_specs()) {
    if (std::find(names.begin(), names.end(), spec.name) == names.end()) continue;
    if (!same_value(spec, checkpoint.str(spec.name), given.str(spec.name)))
      out += (out.empty() ? "" : ", ") + spec.name + " (checkpoint " + checkpoint.str(spec.name) + ", given " +
             given.str(spec.name) + ")";
  }
  return out;
}

void replace_earlier_run(const std::string& out, bool overwrite) {
  if (!fs::is_directory(out)) return;
  const FolderLock lock(out);  // a run still writing there is named, and none of its files is deleted
  std::vector<fs::path> earlier;
  for (const auto& e : fs::directory_iterator(out)) {
    const std::string name = e.path().filename().string();
    if (name == train::kLatestCheckpoint || train::is_checkpoint_file_name(name)) earlier.push_back(e.path());
  }
  if (earlier.empty()) return;
  if (!overwrite)
    throw std::invalid_argument("mhc train: " + out + " holds an earlier run (continue it with --resume " + out +
                                ", or start afresh with --overwrite)");
  for (const auto& p : earlier) fs::remove(p);
}

void declare_checkpoint_flag(Args& a) { a.flag("ckpt", "", "a run folder (its latest checkpoint) or a checkpoint file"); }

void declare_threads_flag(Args& a) {
  const train::SettingSpec& threads = train::setting_spec("threads");
  a.flag(threads.name, threads.default_value, threads.help, threads.range);
}

RunToRead run_to_read(const Args& a) {
  if (a.str("ckpt").empty())
    throw std::invalid_argument(a.command() + ": --ckpt is required (a run folder or checkpoint file)");
  const int threads = static_cast<int>(a.integer("threads"));
  torch::set_num_threads(threads);
  return {train::resolve_checkpoint(a.str("ckpt")), threads};
}

}  // namespace mhc::cli
