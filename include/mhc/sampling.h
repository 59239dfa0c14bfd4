// What is asked of a trained model: its mean validation loss, and continuations of a prompt.
#pragma once

#include <cstdint>
#include <vector>

#include "mhc/data.h"
#include "mhc/model.h"

namespace mhc::train {

// Mean validation loss (nats) over `batches` batches of `batch` windows (0: the whole split).
double evaluate(GPT& model, const data::WindowSampler& val, int64_t batch, int64_t batches);
// Continues `prompt` by `tokens` tokens (temperature 0: greedy; top_k 0: no cut).
std::vector<int32_t> generate(GPT& model, std::vector<int32_t> prompt, int64_t tokens, double temperature,
                              int64_t top_k, uint64_t seed);

}  // namespace mhc::train
