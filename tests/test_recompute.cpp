// Recomputation (mhc/recompute.h) and the counting allocator that measures it (mhc/live_bytes.h):
// `streams` and `blocks` change memory, never a value, so every test compares bit for bit with no
// recomputation; the memory tests check the bytes the policy must give back, counted exactly.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "helpers.h"
#include "mhc/live_bytes.h"
#include "mhc/model.h"
#include "mhc/optimizer.h"
#include "mhc/recompute.h"
#include "mhc/trainer.h"

namespace mhc::test {
namespace {


TEST(Recompute, PolicyNamesAndGroupSizes) {
  EXPECT_EQ(parse_recompute("streams"), Recompute::streams);
  EXPECT_STREQ(recompute_name(parse_recompute("blocks")), "blocks");
  EXPECT_EQ(error_of([] { parse_recompute("fast"); }),
            "--recompute 'fast' is not a recomputation policy (accepted: none, streams, blocks)");
  // streams: the whole stack in the fewest equal groups of at most 12 sublayers.
  EXPECT_EQ(auto_group_size(Recompute::streams, 4, 12), 12);
  EXPECT_EQ(auto_group_size(Recompute::streams, 4, 30), 10);
  EXPECT_EQ(auto_group_size(Recompute::streams, 4, 48), 12);
  EXPECT_EQ(auto_group_size(Recompute::streams, 4, 5), 5);
  // blocks: the paper's round(sqrt(n·L/(n+2))): 12 sublayers of 4 streams -> sqrt(8) -> 3.
  EXPECT_EQ(auto_group_size(Recompute::blocks, 4, 12), 3);
  EXPECT_EQ(auto_group_size(Recompute::blocks, 4, 48), 6);
  EXPECT_EQ(auto_group_size(Recompute::blocks, 1, 1), 1);
  EXPECT_EQ(group_size({Recompute::blocks, 0}, 4, 12), 3);
  EXPECT_EQ(group_size({Recompute::streams, 100}, 4, 12), 12);  // at most the whole stack
  EXPECT_NE(error_of([] { group_size({Recompute::streams, -1}, 4, 12); }).find("must be auto or at least 1"),
            std::string::npos);
}

// ------------------------------------------------------------------------- the trained model
struct TrainedRun {
  std::vector<double> losses, grad_norms;
  std::vector<Tensor> parameters;
};

GPTConfig tiny_config(Variant variant, int64_t n, torch::ScalarType dtype) {
  GPTConfig c;
  c.vocab = 50, c.dim = 16, c.layers = 3, c.heads = 2, c.seq_len = 12, c.variant = variant, c.streams = n;
  c.dtype = dtype;
  return c;
}

// `steps` AdamW steps on the same random batches; the policy switches to `later` halfway, as a
// resumed run may.
TrainedRun train(GPTConfig config, RecomputeOptions first, RecomputeOptions later, int steps) {
  config.recompute = first;
  torch::manual_seed(0);
  GPT model(config);
  std::vector<std::pair<std::string, Tensor>> named;
  for (auto& p : model->named_parameters()) named.emplace_back(p.key(), p.value());
  train::AdamW adam(named, {});
  TrainedRun run;
  torch::manual_seed(1);
  for (int step = 0; step < steps; ++step) {
    if (step == steps / 2) model->set_recompute(later);
    const Tensor tokens = torch::randint(config.vocab, {3, config.seq_len + 1}, torch::kLong);
    const Tensor x = tokens.slice(1, 0, config.seq_len), y = tokens.slice(1, 1);
    const auto result = train::train_step(adam, model->parameters(), [&] { return model->loss(x, y); }, 1, 1.0, 3e-3);
    run.losses.push_back(result.loss), run.grad_norms.push_back(result.grad_norm);
  }
  for (const Tensor& p : model->parameters()) run.parameters.push_back(p.detach().clone());
  return run;
}

void expect_identical(const TrainedRun& a, const TrainedRun& b) {
  EXPECT_EQ(a.losses, b.losses);
  EXPECT_EQ(a.grad_norms, b.grad_norms);
  ASSERT_EQ(a.parameters.size(), b.parameters.size());
  for (size_t i = 0; i < a.parameters.size(); ++i) EXPECT_TRUE(torch::equal(a.parameters[i], b.parameters[i])) << i;
}

TEST(Recompute, EveryPolicyTrainsBitIdenticallyForTwentySteps) {
  const RecomputeOptions none{};
  for (auto [variant, n] : {std::pair{Variant::residual, 1}, {Variant::hc, 4}, {Variant::mhc, 4}, {Variant::mhc_lite, 3}}) {
    for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
      const TrainedRun reference = train(tiny_config(variant, n, dtype), none, none, 20);
      // Groups of 1 (nothing to free), 2, auto (the whole stack of 6 here, 2 for blocks), a
      // group that spans a block boundary (4), and a switch from none halfway (a resumed run).
      for (RecomputeOptions policy : {RecomputeOptions{Recompute::streams, 1}, {Recompute::streams, 2},
                                      {Recompute::streams, 0}, {Recompute::streams, 4}, {Recompute::streams, 6},
                                      {Recompute::blocks, 0}, {Recompute::blocks, 1}, {Recompute::blocks, 6}}) {
        SCOPED_TRACE(std::string(variant_name(variant)) + " " + c10::toString(dtype) + " " + recompute_name(policy.mode) +
                     " every " + std::to_string(policy.every));
        expect_identical(reference, train(tiny_config(variant, n, dtype), policy, policy, 20));
      }
      SCOPED_TRACE(std::string(variant_name(variant)) + " none, then streams");
      expect_identical(reference, train(tiny_config(variant, n, dtype), none, {Recompute::streams, 0}, 20));
    }
  }
}

// ---------------------------------------------------------------------- a stack of sublayers
// A stack of L sublayers F_l(h) = tanh(h ⊙ w_l) over T tokens of n streams of width C.
struct Stack {
  int64_t T, n, C, L;
  mutable HyperConnectionStack connections{nullptr};
  std::vector<Tensor> weights;
  Tensor x;

  Stack(Variant variant, int64_t T, int64_t n, int64_t C, int64_t L) : T(T), n(n), C(C), L(L) {
    torch::manual_seed(0);
    connections = HyperConnectionStack(HyperConnectionOptions(variant, n, C), L);
    // Coefficients away from their initial values, so that every stream and every entry matters.
    for (auto& p : connections->parameters()) p.data().add_(0.3 * torch::randn_like(p));
    for (int64_t l = 0; l < L; ++l) weights.push_back(torch::randn({C}).requires_grad_());
    x = torch::randn({T, n, C}).requires_grad_();
  }

  std::vector<Sublayer> sublayers() const {
    std::vector<Sublayer> fs;
    for (const Tensor& w : weights) fs.push_back([w](const Tensor& h) { return torch::tanh(h * w); });
    return fs;
  }

  Tensor forward(const RecomputeOptions& policy) const {
    return connections->forward(x, sublayers(), policy).sum(-2).pow(2).sum();
  }

  std::vector<Tensor> leaves() const {
    std::vector<Tensor> all = connections->parameters();
    all.insert(all.end(), weights.begin(), weights.end());
    all.push_back(x);
    return all;
  }

  std::vector<Tensor> gradients(const RecomputeOptions& policy, int backward_passes = 1) const {
    for (Tensor t : leaves()) t.mutable_grad() = Tensor();
    const Tensor loss = forward(policy);
    for (int i = 0; i < backward_passes; ++i) loss.backward({}, /*retain_graph=*/i + 1 < backward_passes);
    std::vector<Tensor> grads;
    for (const Tensor& t : leaves()) grads.push_back(t.grad().clone());
    return grads;
  }

  int64_t state_bytes() const { return T * n * C * static_cast<int64_t>(sizeof(float)); }
};

void expect_equal(const std::vector<Tensor>& a, const std::vector<Tensor>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i], b[i])) << "gradient " << i;
}

TEST(Recompute, StackGradientsAreBitIdenticalForEveryVariant) {
  for (Variant variant : {Variant::hc, Variant::mhc, Variant::mhc_v4, Variant::mhc_lite, Variant::kromhc, Variant::ihc}) {
    SCOPED_TRACE(variant_name(variant));
    const Stack stack(variant, 40, 4, 24, 7);
    const auto reference = stack.gradients({});
    for (int64_t every : {1, 2, 3, 7})
      for (Recompute mode : {Recompute::streams, Recompute::blocks}) {
        SCOPED_TRACE(std::string(recompute_name(mode)) + " every " + std::to_string(every));
        expect_equal(reference, stack.gradients({mode, every}));
      }
  }
}

// A parameter changed in place between the forward and the backward pass (an optimizer step):
// autograd refuses it without recomputation, and so must `blocks`, whose backward pass would re-run
// the segment with the new values (issue 35, item 1: wrong gradients, max error 154.7 against 13.6).
TEST(Recompute, BlocksRefuseAParameterChangedInPlaceSinceTheForwardPass) {
  for (Recompute mode : {Recompute::none, Recompute::blocks}) {
    SCOPED_TRACE(recompute_name(mode));
    const Stack stack(Variant::mhc, 40, 4, 8, 4);
    const Tensor loss = stack.forward({mode, 2});
    {
      torch::NoGradGuard no_grad;
      stack.connections->connections[1]->phi.add_(0.5);
    }
    const std::string error = error_of([&] { loss.backward(); });
    EXPECT_NE(error.find(mode == Recompute::blocks ? "was modified in place after the forward pass (version"
                                                   : "modified by an inplace operation"),
              std::string::npos)
        << error;
  }
}

TEST(Recompute, RetainedGraphsRunTheBackwardPassTwice) {
  const Stack stack(Variant::mhc, 40, 4, 24, 6);
  const auto reference = stack.gradients({}, 2);
  for (Recompute mode : {Recompute::streams, Recompute::blocks}) {
    SCOPED_TRACE(recompute_name(mode));
    expect_equal(reference, stack.gradients({mode, 3}, 2));
  }
}

TEST(Recompute, BlocksRefuseASecondBackwardPassOfAReleasedGraph) {
  const Stack stack(Variant::mhc, 8, 4, 8, 2);
  const Tensor loss = stack.forward({Recompute::blocks, 2});
  loss.backward();
  EXPECT_NE(error_of([&] { loss.backward(); }).find("retain_graph"), std::string::npos);
}

TEST(Recompute, BlocksRefuseWhatAReentrantCheckpointCannotDo) {
  Stack stack(Variant::mhc, 8, 4, 8, 2);
  Tensor loss = stack.forward({Recompute::blocks, 2});
  EXPECT_NE(error_of([&] { torch::autograd::grad({loss}, {stack.x}); }).find("works with backward() only"),
            std::string::npos);
  loss = stack.forward({Recompute::blocks, 2});
  EXPECT_NE(error_of([&] { loss.backward({}, true, /*create_graph=*/true); }).find("does not support create_graph"),
            std::string::npos);
  // Its input changed in place after the forward pass: the version check refuses the recomputation.
  const Tensor x = stack.x.detach().clone().requires_grad_();
  Tensor x2 = x * 1;
  loss = stack.connections->forward(x2, stack.sublayers(), {Recompute::blocks, 2}).sum();
  {
    torch::NoGradGuard no_grad;
    x2.add_(1);
  }
  EXPECT_NE(error_of([&] { loss.backward(); }).find("modified by an inplace operation"), std::string::npos);
}

TEST(Recompute, BlocksWithNothingToTrainIsNoError) {
  Stack stack(Variant::mhc, 8, 4, 8, 2);
  for (Tensor t : stack.leaves()) t.requires_grad_(false);
  const Tensor head = torch::ones({8}, torch::requires_grad());  // trained after the stack only
  (stack.connections->forward(stack.x, stack.sublayers(), {Recompute::blocks, 1}).sum(-2) * head).sum().backward();
  EXPECT_TRUE(head.grad().defined());
}

TEST(Recompute, WithoutGradModeNothingIsFreedOrRecorded) {
  const Stack stack(Variant::mhc, 16, 4, 8, 4);
  Tensor none, streams, blocks;
  {
    torch::NoGradGuard no_grad;
    none = stack.connections->forward(stack.x, stack.sublayers(), {});
    streams = stack.connections->forward(stack.x, stack.sublayers(), {Recompute::streams, 4});
    blocks = stack.connections->forward(stack.x, stack.sublayers(), {Recompute::blocks, 2});
  }
  EXPECT_TRUE(torch::equal(none, streams));
  EXPECT_TRUE(torch::equal(none, blocks));
}

// ------------------------------------------------------------------- the counting allocator
TEST(LiveBytes, AKnownAllocationPatternGivesTheKnownPeak) {
  live_bytes::install();
  live_bytes::install();  // idempotent
  ASSERT_TRUE(live_bytes::installed());
  const int64_t base = live_bytes::live();
  live_bytes::reset_peak();
  EXPECT_EQ(live_bytes::peak(), base);
  {
    Tensor a = torch::empty({1000}, torch::kFloat);  // 4000 bytes
    EXPECT_EQ(live_bytes::live(), base + 4000);
    Tensor b = torch::empty({250}, torch::kDouble);  // 2000 bytes
    EXPECT_EQ(live_bytes::live(), base + 6000);
    a = Tensor();
    EXPECT_EQ(live_bytes::live(), base + 2000);
    Tensor c = torch::empty({3000}, torch::kByte);  // 3000 bytes: live 5000, below the peak of 6000
    Tensor view = c.view({30, 100});                // a view allocates nothing
    EXPECT_EQ(live_bytes::live(), base + 5000);
    EXPECT_EQ(live_bytes::peak(), base + 6000);
  }
  EXPECT_EQ(live_bytes::live(), base);
  EXPECT_EQ(live_bytes::peak(), base + 6000);
  live_bytes::reset_peak();
  EXPECT_EQ(live_bytes::peak(), base);
}

// `streams` keeps, of a group of L_r sublayers, the input state and nothing else of the n-stream
// states until the backward pass: L_r − 1 states fewer than no recomputation, to the byte.
TEST(LiveBytes, StreamsFreesTheInnerStatesOfEveryGroupUntilTheBackwardPass) {
  live_bytes::install();
  const Stack stack(Variant::mhc, 64, 4, 32, 6);
  auto live_after_forward = [&](const RecomputeOptions& policy) {
    const int64_t before = live_bytes::live();
    const Tensor loss = stack.forward(policy);
    return live_bytes::live() - before;  // the graph's saved tensors, and the loss
  };
  const int64_t none = live_after_forward({});
  EXPECT_EQ(none - live_after_forward({Recompute::streams, 6}), 5 * stack.state_bytes());
  EXPECT_EQ(none - live_after_forward({Recompute::streams, 3}), 4 * stack.state_bytes());  // 2 of each 3
  EXPECT_EQ(none - live_after_forward({Recompute::streams, 1}), 0);

  // In the backward pass at most three states are alive at once (two rebuilt, and the one a fused
  // boundary's backward also reads): the peak stays below no recomputation's by at least the
  // L_r − 3 states that are never all back at the same time.
  auto peak_of_step = [&](const RecomputeOptions& policy) {
    const int64_t before = live_bytes::live();
    live_bytes::reset_peak();
    stack.forward(policy).backward();
    return live_bytes::peak() - before;
  };
  peak_of_step({});  // the leaves' .grad allocated once, outside the measured steps
  const int64_t peak_none = peak_of_step({}), peak_streams = peak_of_step({Recompute::streams, 6});
  EXPECT_LE(peak_streams, peak_none - 3 * stack.state_bytes());
}

}  // namespace
}  // namespace mhc::test
