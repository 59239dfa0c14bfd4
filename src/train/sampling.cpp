// Evaluation and generation with a trained model (mhc/sampling.h).
#include "mhc/sampling.h"

#include <cmath>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>

namespace mhc::train {

using torch::Tensor;

double evaluate(GPT& model, const data::WindowSampler& val, int64_t batch, int64_t batches) {
  torch::NoGradGuard no_grad;
  const int64_t windows = batches > 0 ? std::min(val.windows(), batch * batches) : val.windows();
  double total = 0;
  for (int64_t first = 0; first < windows; first += batch) {
    const int64_t count = std::min(batch, windows - first);
    auto [x, y] = val.ordered(first, count);
    total += model->loss(x, y).item<double>() * static_cast<double>(count);
  }
  return total / static_cast<double>(windows);
}

namespace {

// The tokens [start, end) of a sequence that the model sees (mhc/sampling.h says why it jumps).
struct ContextWindow {
  int64_t context, keep, start = 0;
  explicit ContextWindow(int64_t context) : context(context), keep(std::max<int64_t>(1, context / 2)) {}
  // For a sequence of `length` tokens, the newest about to run: true when the window had to restart.
  bool restarts_at(int64_t length) {
    if (length - start <= context) return false;
    start = length - keep;
    return true;
  }
};

// One sequence's next token from its logits [vocab].
int32_t choose(Tensor logits, const SamplingOptions& o, std::mt19937_64& rng) {
  logits = logits.to(torch::kDouble);
  if (o.temperature <= 0) return static_cast<int32_t>(logits.argmax().item<int64_t>());
  if (o.top_k > 0 && o.top_k < logits.size(0)) {
    const double kth = std::get<0>(logits.topk(o.top_k)).min().item<double>();
    logits = logits.masked_fill(logits < kth, -INFINITY);
  }
  const Tensor cumulative = (logits / o.temperature).softmax(0).cumsum(0);
  const double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng) * cumulative[-1].item<double>();
  const auto next = (cumulative < u).sum().item<int64_t>();
  return static_cast<int32_t>(std::min<int64_t>(next, logits.size(0) - 1));
}

Tensor as_tensor(const std::vector<int32_t>& tokens, int64_t first, int64_t last) {
  return torch::tensor(std::vector<int64_t>(tokens.begin() + first, tokens.begin() + last), torch::kLong);
}

void check_prompts(const std::vector<std::vector<int32_t>>& prompts, int64_t context) {
  if (prompts.empty()) throw std::invalid_argument("generate: no prompt given (accepted: at least one)");
  for (size_t b = 0; b < prompts.size(); ++b) {
    const auto length = static_cast<int64_t>(prompts[b].size());
    if (length == 0) throw std::invalid_argument("prompt " + std::to_string(b) + " is empty (accepted: at least one token)");
    if (length > context)
      throw std::invalid_argument("prompt " + std::to_string(b) + " has " + std::to_string(length) +
                                  " tokens, more than the model's context of " + std::to_string(context) +
                                  " (accepted: 1 to " + std::to_string(context) + " tokens)");
  }
}

// Every sequence's logits [B, vocab] for its newest token, which has not run yet.
class NextLogits {
 public:
  NextLogits(GPT& model, const std::vector<std::vector<int32_t>>& sequences, bool kv_cache)
      : model_(model), windows_(sequences.size(), ContextWindow(model->config().seq_len)) {
    if (!kv_cache) return;
    cache_.emplace(model->config(), static_cast<int64_t>(sequences.size()), model->parameters()[0].device());
    for (size_t b = 0; b < sequences.size(); ++b) prefill_all_but_newest(sequences[b], static_cast<int64_t>(b));
  }

  Tensor operator()(const std::vector<std::vector<int32_t>>& sequences) {
    if (!cache_) return uncached(sequences);
    std::vector<int64_t> newest;
    for (size_t b = 0; b < sequences.size(); ++b) {
      const auto length = static_cast<int64_t>(sequences[b].size());
      if (windows_[b].restarts_at(length)) prefill_all_but_newest(sequences[b], static_cast<int64_t>(b));
      newest.push_back(sequences[b].back());
    }
    return model_->decode(torch::tensor(newest, torch::kLong), *cache_);
  }

 private:
  // The window's tokens before the newest go into the cache; the newest then runs in decode.
  void prefill_all_but_newest(const std::vector<int32_t>& sequence, int64_t b) {
    const int64_t start = windows_[b].start, newest = static_cast<int64_t>(sequence.size()) - 1;
    if (newest > start)
      model_->prefill(as_tensor(sequence, start, newest), *cache_, b);
    else
      cache_->lengths[b] = 0;
  }

  Tensor uncached(const std::vector<std::vector<int32_t>>& sequences) {
    torch::NoGradGuard no_grad;
    std::vector<Tensor> rows;
    for (size_t b = 0; b < sequences.size(); ++b) {
      const auto length = static_cast<int64_t>(sequences[b].size());
      windows_[b].restarts_at(length);
      const Tensor window = as_tensor(sequences[b], windows_[b].start, length).view({1, -1});
      rows.push_back(model_->forward(window)[0][-1]);
    }
    return torch::stack(rows);
  }

  GPT& model_;
  std::vector<ContextWindow> windows_;
  std::optional<KVCache> cache_;
};

}  // namespace

std::vector<std::vector<int32_t>> generate(GPT& model, std::vector<std::vector<int32_t>> sequences,
                                           const SamplingOptions& options, const TokenSink& sink) {
  check_prompts(sequences, model->config().seq_len);
  if (options.tokens == 0) return sequences;
  std::vector<std::mt19937_64> rngs;
  for (size_t b = 0; b < sequences.size(); ++b) rngs.emplace_back(options.seed + b);
  NextLogits next_logits(model, sequences, options.kv_cache);
  for (int64_t i = 0; i < options.tokens; ++i) {
    const Tensor logits = next_logits(sequences);
    for (size_t b = 0; b < sequences.size(); ++b) {
      const int32_t token = choose(logits[static_cast<int64_t>(b)], options, rngs[b]);
      sequences[b].push_back(token);
      if (sink) sink(static_cast<int64_t>(b), token);
    }
  }
  return sequences;
}

}  // namespace mhc::train
