// Evaluation and generation with a trained model (mhc/sampling.h).
#include "mhc/sampling.h"

#include <cmath>
#include <random>

namespace mhc::train {

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

std::vector<int32_t> generate(GPT& model, std::vector<int32_t> tokens, int64_t count, double temperature,
                              int64_t top_k, uint64_t seed) {
  torch::NoGradGuard no_grad;
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  const int64_t context = model->config().seq_len;
  if (tokens.empty()) tokens.push_back(0);
  for (int64_t i = 0; i < count; ++i) {
    const int64_t start = std::max<int64_t>(0, static_cast<int64_t>(tokens.size()) - context);
    std::vector<int64_t> window(tokens.begin() + start, tokens.end());
    const torch::Tensor x = torch::tensor(window, torch::kLong).view({1, -1});
    torch::Tensor logits = model->forward(x).select(1, x.size(1) - 1).squeeze(0).to(torch::kDouble);
    int32_t next = 0;
    if (temperature <= 0) {
      next = static_cast<int32_t>(logits.argmax().item<int64_t>());
    } else {
      if (top_k > 0 && top_k < logits.size(0)) {
        const double kth = std::get<0>(logits.topk(top_k)).min().item<double>();
        logits = logits.masked_fill(logits < kth, -INFINITY);
      }
      const torch::Tensor probs = (logits / temperature).softmax(0).cumsum(0);
      const double u = uniform(rng) * probs[-1].item<double>();
      next = static_cast<int32_t>((probs < u).sum().item<int64_t>());
      next = std::min<int32_t>(next, static_cast<int32_t>(logits.size(0) - 1));
    }
    tokens.push_back(next);
  }
  return tokens;
}

}  // namespace mhc::train
