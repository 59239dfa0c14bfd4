// Inference with the KV cache (DESIGN.md §12): prefill and decode give the uncached forward's
// logits for every variant, sequences of different lengths decode together, and generation gives
// the same tokens cached or not, across the context limit, where the window restarts from its
// newest half.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <limits>

#include "helpers.h"
#include "mhc/live_bytes.h"
#include "mhc/model.h"
#include "mhc/sampling.h"

namespace mhc::test {
namespace {

using train::SamplingOptions;

struct ModelCase {
  Variant variant;
  int64_t n;
  StreamHead head = StreamHead::sum;
};

const std::vector<ModelCase> kCases = {{Variant::residual, 1}, {Variant::hc, 4},      {Variant::mhc, 4},
                                       {Variant::mhc_v4, 4},   {Variant::mhc_v4, 4, StreamHead::hyper},
                                       {Variant::mhc_lite, 3}, {Variant::kromhc, 8}, {Variant::ihc, 2}};

std::string case_name(const ModelCase& c) {
  return std::string(variant_name(c.variant)) + " n=" + std::to_string(c.n) + " head " + stream_head_name(c.head);
}

GPT model_of(const ModelCase& c) {
  GPTConfig config;
  config.vocab = 50, config.dim = 16, config.layers = 2, config.heads = 2, config.seq_len = 12;
  config.variant = c.variant, config.streams = c.n, config.head = c.head;
  torch::manual_seed(0);
  GPT model(config);
  return model;
}

// The cached and the uncached path compute the same sums in other orders (a GEMV for a GEMM, the
// attention over a cache with a mask). Two orders of a K-term fp32 sum differ by at most 2·K·eps of
// the sum of the terms' magnitudes; each of the 2L sublayers and the head adds such a difference,
// and the pre-norm sublayers pass a relative change on with a gain near 1. K is the longest
// reduction (the MLP's hidden width, 64 here), and the scale is the logits' own.
double rounding_tolerance(const GPT& model, const torch::Tensor& logits) {
  const GPTConfig& c = model->config();
  const double K = static_cast<double>(std::max({c.dim, c.mlp_hidden(), c.seq_len}));
  const double eps = std::numeric_limits<float>::epsilon();
  return (2.0 * static_cast<double>(c.layers) + 1.0) * 2.0 * K * eps * (logits.abs().max().item<double>() + 1.0);
}

void expect_close(const GPT& model, const torch::Tensor& cached, const torch::Tensor& uncached) {
  const double tolerance = rounding_tolerance(model, uncached);
  EXPECT_LE((cached - uncached).abs().max().item<double>(), tolerance);
}

TEST(Generation, PrefillAndDecodeGiveTheForwardLogits) {
  for (const ModelCase& c : kCases) {
    SCOPED_TRACE(case_name(c));
    GPT model = model_of(c);
    torch::NoGradGuard no_grad;
    const torch::Tensor tokens = torch::randint(50, {2, 12}, torch::kLong);
    auto uncached_last = [&](int64_t row, int64_t length) {
      return model->forward(tokens[row].slice(0, 0, length).view({1, -1}))[0][-1];
    };
    KVCache cache(model->config(), 2, torch::kCPU);
    const std::vector<int64_t> prompt_lengths = {4, 7};  // different: decode masks each sequence's own keys
    for (int64_t row = 0; row < 2; ++row) {
      const torch::Tensor prompt = tokens[row].slice(0, 0, prompt_lengths[row]);
      expect_close(model, model->prefill(prompt, cache, row), model->forward(prompt.view({1, -1}))[0]);
    }
    for (int64_t step = 0; step < 5; ++step) {  // sequence 1 reaches the context, 12 tokens
      const torch::Tensor next = torch::stack({tokens[0][prompt_lengths[0] + step], tokens[1][prompt_lengths[1] + step]});
      const torch::Tensor logits = model->decode(next, cache);
      for (int64_t row = 0; row < 2; ++row) expect_close(model, logits[row], uncached_last(row, prompt_lengths[row] + step + 1));
    }
    EXPECT_EQ(cache.lengths, (std::vector<int64_t>{9, 12}));
    EXPECT_EQ(error_of([&] { model->decode(tokens.select(1, 0), cache); }),
              "GPT decode: sequence 1 fills the context (12 tokens): prefill a shorter window first");
  }
}

std::vector<std::vector<int32_t>> generated(GPT& model, const std::vector<std::vector<int32_t>>& prompts,
                                            SamplingOptions options, bool kv_cache) {
  options.kv_cache = kv_cache;
  return train::generate(model, prompts, options);
}

TEST(Generation, CachedAndUncachedGiveTheSameTokensAcrossTheContextLimit) {
  const std::vector<std::vector<int32_t>> prompts = {{1, 2, 3}, {7, 8, 9, 10, 11}};
  for (const ModelCase& c : kCases) {
    SCOPED_TRACE(case_name(c));
    GPT model = model_of(c);
    SamplingOptions greedy;
    greedy.tokens = 30, greedy.temperature = 0;  // 35 tokens: the 12-token window restarts 4 times
    SamplingOptions sampled = greedy;
    sampled.temperature = 1.0, sampled.top_k = 10, sampled.seed = 5;
    for (const SamplingOptions& options : {greedy, sampled}) {
      const auto cached = generated(model, prompts, options, true);
      EXPECT_EQ(cached, generated(model, prompts, options, false));
      // Decoded together or alone, a sequence is the same.
      EXPECT_EQ(cached[0], generated(model, {prompts[0]}, options, true)[0]);
    }
  }
}

// The window rule of mhc/sampling.h written out independently: each greedy token is the argmax of
// the uncached forward over the window [start, length), start jumping to length − 6 (half the
// 12-token context) whenever the window would exceed 12.
TEST(Generation, TheWindowRestartsFromItsNewestHalf) {
  GPT model = model_of({Variant::mhc, 4});
  {
    torch::NoGradGuard no_grad;  // at its initial scale, the model's next token hardly depends on the context
    for (auto& p : model->named_parameters())
      if (p.key().find("hc") == std::string::npos) p.value().mul_(20);
  }
  SamplingOptions greedy;
  greedy.tokens = 25, greedy.temperature = 0;
  const std::vector<int32_t> sequence = train::generate(model, {{4, 5, 6}}, greedy)[0];
  torch::NoGradGuard no_grad;
  int64_t start = 0;
  for (int64_t length = 3; length < static_cast<int64_t>(sequence.size()); ++length) {
    if (length - start > 12) start = length - 6;
    const torch::Tensor window =
        torch::tensor(std::vector<int64_t>(sequence.begin() + start, sequence.begin() + length), torch::kLong);
    EXPECT_EQ(model->forward(window.view({1, -1}))[0][-1].argmax().item<int64_t>(), sequence[length]) << "position " << length;
  }
}

TEST(Generation, TokensStreamInOrderToTheSink) {
  GPT model = model_of({Variant::mhc, 4});
  SamplingOptions options;
  options.tokens = 4;
  std::vector<std::pair<int64_t, int32_t>> streamed;
  const auto sequences =
      train::generate(model, {{1}, {2, 3}}, options, [&](int64_t b, int32_t token) { streamed.emplace_back(b, token); });
  ASSERT_EQ(streamed.size(), 8u);
  for (size_t i = 0; i < streamed.size(); ++i) {
    const auto [b, token] = streamed[i];
    EXPECT_EQ(b, static_cast<int64_t>(i % 2));
    EXPECT_EQ(token, sequences[b][sequences[b].size() - 4 + i / 2]);
  }
}

int64_t bytes_of(const std::vector<torch::Tensor>& tensors) {
  int64_t bytes = 0;
  for (const auto& t : tensors) bytes += t.numel() * static_cast<int64_t>(t.element_size());
  return bytes;
}

// Under no_grad the ops record nothing: no autograd node, and what stays allocated after a call is
// its outputs alone (the kernels' scratch, the projections and norms a backward would have read,
// is freed on return).
TEST(Generation, OpsUnderNoGradKeepOnlyTheirOutputs) {
  live_bytes::install();
  const Inputs in = make_inputs(Variant::mhc, 64, 4, 32, Scenario::random, 3).to(torch::kFloat);
  const Tensor phi = in.phi.detach().requires_grad_(), bias = in.bias.detach().requires_grad_();
  const Tensor alpha = in.alpha.detach().requires_grad_(), y = torch::randn({64, 32});
  torch::NoGradGuard no_grad;
  const PreOutput mix = mhc::pre(in.x, phi, bias, alpha, Variant::mhc);
  const int64_t before = live_bytes::live();
  const PreOutput next = mhc::boundary(in.x, y, mix.H_post, mix.H_res, phi, bias, alpha, Variant::mhc);
  EXPECT_EQ(live_bytes::live() - before, bytes_of({next.x_next, next.h, next.H_pre, next.H_post, next.H_res}));
  for (const Tensor& out : {mix.h, mix.H_res, next.x_next, next.H_res}) {
    EXPECT_FALSE(out.requires_grad());
    EXPECT_EQ(out.grad_fn(), nullptr);
  }
  const int64_t after_boundary = live_bytes::live();
  const Tensor x_next = mhc::post(in.x, y, mix.H_post, mix.H_res);
  EXPECT_EQ(live_bytes::live() - after_boundary, bytes_of({x_next}));
}

TEST(Generation, BadInputIsRefusedWithOneLine) {
  GPT model = model_of({Variant::mhc, 4});
  SamplingOptions options;
  EXPECT_EQ(error_of([&] { train::generate(model, {}, options); }), "generate: no prompt given (accepted: at least one)");
  EXPECT_EQ(error_of([&] { train::generate(model, {{1}, {}}, options); }), "prompt 1 is empty (accepted: at least one token)");
  EXPECT_EQ(error_of([&] { train::generate(model, {std::vector<int32_t>(13, 1)}, options); }),
            "prompt 0 has 13 tokens, more than the model's context of 12 (accepted: 1 to 12 tokens)");
  KVCache cache(model->config(), 1, torch::kCPU);
  EXPECT_EQ(error_of([&] { model->prefill(torch::zeros({13}, torch::kLong), cache, 0); }),
            "GPT prefill: tokens must be [T] with 1 <= T <= 12 (the context), got [13]");
  EXPECT_EQ(error_of([&] { model->prefill(torch::zeros({3}, torch::kLong), cache, 1); }),
            "GPT prefill: sequence 1 is not in the cache (accepted: 0 to 0)");
  EXPECT_EQ(error_of([&] { model->decode(torch::zeros({2}, torch::kLong), cache); }),
            "GPT decode: tokens must be [1] (one per sequence of the cache), got [2]");
  EXPECT_EQ(error_of([&] { KVCache(model->config(), 0, torch::kCPU); }), "KV cache: batch must be at least 1, got 0");
}

}  // namespace
}  // namespace mhc::test
