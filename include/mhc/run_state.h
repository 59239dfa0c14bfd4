// A run's checkpoint: what run_training writes into a Checkpoint (the file layer, mhc/checkpoint.h) and
// reads back, in one place (src/train/run_state.cpp), every key written next to where it is read
// and checked. Tensors: model/<parameter>, adam_m/<parameter>, adam_v/<parameter>, tokenizer (its
// bytes), rng/torch_cpu; metadata: step, data_position, bad_steps, adam_steps, tokenizer (its
// kind), config (the settings, as config.json). Every error names the file and the key.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "mhc/data.h"
#include "mhc/model.h"
#include "mhc/checkpoint.h"
#include "mhc/optimizer.h"
#include "mhc/settings.h"

namespace mhc::train {

// The settings and step of a checkpoint written by run_training, from its header alone.
struct RunInfo {
  Settings settings;
  int64_t step = 0;
};
RunInfo read_run_info(const std::string& checkpoint_path);

// What sampling and evaluation need from a finished run.
struct LoadedRun {
  Settings settings;
  std::unique_ptr<data::Tokenizer> tokenizer;
  GPT model{nullptr};
  int64_t step = 0;
};
LoadedRun load_run(const std::string& checkpoint_path);
// The run's corpus tokenized with its own tokenizer, which moves into the result (data_dir empty:
// the run's).
data::TokenizedCorpus run_corpus(LoadedRun& run, const std::string& data_dir, int threads);

// What a run's checkpoint holds besides the weights, the AdamW moments and the RNG state.
struct RunState : RunInfo {
  int64_t data_position = 0, bad_steps = 0, adam_steps = 0;
  std::unique_ptr<data::Tokenizer> tokenizer;
};

// Writes the run at `step` as out/ckpt-<step>.safetensors (save_checkpoint), points out/latest at
// it, then removes the oldest checkpoints beyond `keep`. AdamW's step count is the optimizer's.
void save_run_state(const std::string& out, int64_t keep, const Settings& settings, int64_t step,
                    int64_t data_position, int64_t bad_steps, const GPT& model, const AdamW& optimizer,
                    const data::Tokenizer& tokenizer);

// Reads and checks what a checkpoint loaded from `path` holds besides the model's and AdamW's
// tensors, and that the tensors it holds are enough for the model its settings describe; throws
// std::invalid_argument naming the file and the key.
RunState load_run_state(const std::string& path, const Checkpoint& checkpoint);

// Puts a resumed run where the checkpoint left it: the weights, AdamW's moments and step count, and
// the CPU generator's state, each tensor checked against what it replaces.
void restore_training(GPT& model, AdamW& optimizer, const Checkpoint& checkpoint, const RunState& state,
                      const std::string& path);

}  // namespace mhc::train
