// How `mhc train` and `mhc compare` turn their flags into a run's settings, and guard run folders.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "args.h"
#include "mhc/train.h"

namespace mhc::cli {

// Declares --preset, --config and one flag per training setting (mhc/train.h setting_specs()).
void declare_training_flags(Args& a);
// A fresh run's settings: the defaults < the preset < --config FILE.toml < the flags given, with
// `overrides` counting as given flags. The plain residual gets one stream unless --streams is given.
train::Settings fresh_settings(const Args& a, const std::map<std::string, std::string>& overrides = {});
// "lr (checkpoint 0.003, given 0.001), …" for each of `names` whose values differ (numbers compared
// as numbers); empty when none do.
std::string differences(const train::Settings& checkpoint, const train::Settings& given,
                        const std::vector<std::string>& names);
// A fresh run never mixes its checkpoints with an earlier run's in `out`: it refuses or, with
// `overwrite`, deletes them first.
void replace_earlier_run(const std::string& out, bool overwrite);

}  // namespace mhc::cli
