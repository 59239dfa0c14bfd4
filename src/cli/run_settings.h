// How the `mhc` commands turn their flags into a run's settings, guard run folders, and find the
// trained run that sample, eval and analyze read.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "args.h"
#include "mhc/settings.h"

namespace mhc::cli {

// What the preset `name` changes from the defaults; throws std::invalid_argument "COMMAND: unknown
// --preset 'NAME' (accepted: deep, small, tiny)".
const std::map<std::string, std::string>& preset_values(const std::string& command, const std::string& name);
// Declares --preset, --config and one flag per training setting (mhc/settings.h setting_specs()).
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

// The flags of the commands that read a trained run: --ckpt, then (after their own) --threads.
void declare_checkpoint_flag(Args& a);
void declare_threads_flag(Args& a);
// After parse(): LibTorch set to --threads threads, and the checkpoint file --ckpt names (required;
// a run folder means its latest checkpoint).
struct RunToRead {
  std::string checkpoint;
  int threads;
};
RunToRead run_to_read(const Args& a);

}  // namespace mhc::cli
