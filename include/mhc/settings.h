// The settings of a training run: every `mhc train` flag with its default (the `tiny` preset), its
// accepted range and its help, written once (setting_specs()); the other presets, a TOML file of
// settings, and config.json. Everything that reads a setting reads it through its spec's range.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "mhc/model.h"
#include "mhc/parse.h"

namespace mhc::train {

// One setting of a run, named as its `mhc train` flag. A resumed run may change only `run` settings;
// the others define the model, the data or the optimisation and must match the checkpoint.
struct SettingSpec {
  std::string name, default_value, help;
  // What the setting accepts: text (checked where it is parsed), or a number in a range.
  ValueRange range;
  bool run;
  // The value a run written before this setting existed had, if it defines the run (for run settings
  // such a run takes the default).
  std::string before_it_existed = {};
  // The name runs, config files and command lines used before it was renamed; still read as this one.
  std::string old_name = {};
};
const std::vector<SettingSpec>& setting_specs();
// Throws std::logic_error for a name that is not a setting.
const SettingSpec& setting_spec(const std::string& name);
// --device: "cpu", "cuda", "cuda:N" (checked to exist here); throws std::invalid_argument naming the
// value and what is accepted.
torch::Device parse_device(const std::string& name);
// --dtype: "float32" or "bfloat16" (one spelling each, so that a resumed run's setting compares
// equal); throws std::invalid_argument.
torch::ScalarType parse_dtype(const std::string& name);
// The default of every --threads flag: the machine's hardware threads.
int default_threads();
// The defaults are the `tiny` preset; these are what `small` and `deep` change.
const std::map<std::string, std::map<std::string, std::string>>& presets();

// Resolved values by name (all of setting_specs()), read as their specs say: a number outside its
// range is std::invalid_argument naming the flag and the range.
class Settings {
 public:
  std::map<std::string, std::string> values;
  const std::string& str(const std::string& name) const;
  int64_t integer(const std::string& name) const;
  double real(const std::string& name) const;
  // config.json: typed values (numbers as numbers).
  std::string to_json() const;
  // Every text setting (paths: --out, --data, --data-dir) is UTF-8, as config.json must hold it;
  // throws std::invalid_argument naming the flag. Checked before a run does any work.
  void require_utf8() const;
  static Settings from_json(const std::string& json);
  // The model the settings describe (vocab from the tokenizer); throws std::invalid_argument.
  GPTConfig model_config(int64_t vocab) const;
  // The variant's own of --cayley-iters, --cayley-scale (jpmhc) and --block-size (gomhc).
  VariantOptions variant_options() const;
};
// Reads a TOML file of `name = value` lines (names as the flags); unknown keys are refused with the
// closest valid name. Throws std::invalid_argument.
std::map<std::string, std::string> read_toml(const std::string& path);

}  // namespace mhc::train
