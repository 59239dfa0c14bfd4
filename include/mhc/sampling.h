// What is asked of a trained model: its mean validation loss, and continuations of prompts.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "mhc/data.h"
#include "mhc/model.h"

namespace mhc::train {

// Mean validation loss (nats) over `batches` batches of `batch` windows (0: the whole split).
double evaluate(GPT& model, const data::WindowSampler& val, int64_t batch, int64_t batches);

struct SamplingOptions {
  int64_t tokens = 100;      // new tokens per sequence
  double temperature = 0.8;  // 0: greedy
  int64_t top_k = 40;        // sample among the k most likely (0: all)
  uint64_t seed = 1;         // sequence b draws from its own generator, seeded seed + b
  // false: every token runs its sequence's whole window through the model (no KV cache), the
  // reference the cached path is tested against.
  bool kv_cache = true;
};

// Called as each new token is chosen, in order: (sequence, token).
using TokenSink = std::function<void(int64_t sequence, int32_t token)>;

// Continues every prompt (each 1 to seq_len tokens; throws std::invalid_argument naming the
// prompt otherwise) by options.tokens tokens, the prompts decoded together as one batch, and
// returns each prompt followed by its continuation.
//
// The context: a sequence's window holds at most seq_len tokens. When the next token would not fit,
// the window restarts from the newest seq_len/2 tokens, which run again as a prompt (the cache
// cannot slide by one: every kept token's keys depend on the dropped ones through the layers
// below). The cached and the uncached path see the same windows, so they give the same logits to
// fp32 rounding, and at temperature 0 the same tokens.
std::vector<std::vector<int32_t>> generate(GPT& model, std::vector<std::vector<int32_t>> prompts,
                                           const SamplingOptions& options, const TokenSink& sink = {});

}  // namespace mhc::train
