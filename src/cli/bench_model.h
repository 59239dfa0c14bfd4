// The model the `mhc bench train` and `mhc bench memory` commands step: a preset's GPT with one
// residual variant, its AdamW, and random token batches (a step's cost does not depend on the text).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "args.h"
#include "mhc/model.h"
#include "mhc/optimizer.h"
#include "mhc/settings.h"

namespace mhc::cli {

// Every setting at its default, then the preset's; throws std::invalid_argument for an unknown preset.
train::Settings preset_settings(const std::string& command, const std::string& preset);

struct BenchModel {
  std::string variant;
  GPT model{nullptr};
  std::unique_ptr<train::AdamW> optimizer;
  std::vector<torch::Tensor> parameters;

  // `variant` with n = streams (1 for the plain residual), initialised from seed 0.
  BenchModel(train::Settings settings, const std::string& variant, const std::string& streams);
  // One full training step (forward, backward, clipping, AdamW) on tokens [B, T + 1].
  void step(const torch::Tensor& tokens);
};

// The flags the preset-model benchmarks share: --preset, --residual, --streams, --threads, --warmup,
// --reps (`reps` measured steps per configuration, `reps_help` says what of them is reported),
// --markdown and --json. `least_warmup`: 1 where the first step must not be measured.
void declare_model_bench_flags(Args& a, const std::string& reps, const std::string& reps_help, int64_t least_warmup = 0);
// The settings of the --preset that `a` names; throws if --markdown and --json are both given.
train::Settings model_bench_settings(const Args& a);

// [batch, seq_len + 1] random tokens for the settings' model.
torch::Tensor random_tokens(const train::Settings& settings);
// Such tokens [B, T + 1] -> the model's inputs [B, T] and next-token targets [B, T].
std::pair<torch::Tensor, torch::Tensor> inputs_and_targets(const torch::Tensor& tokens);

}  // namespace mhc::cli
