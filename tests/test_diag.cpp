// The signal-gain diagnostics (mhc/diag.h) against matrices whose gains are worked out by hand, the
// exactness of mHC-lite's composite map, and the per-sublayer diagnostics of a GPT.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "mhc/diag.h"
#include "mhc/ops.h"

namespace mhc::test {
namespace {

using torch::Tensor;

Tensor matrix(std::vector<std::vector<double>> rows) {
  const int64_t n = static_cast<int64_t>(rows.size());
  Tensor m = torch::empty({n, n}, torch::kDouble);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) m[i][j] = rows[i][j];
  return m;
}

double forward_gain(const Tensor& H) { return diag::forward_gain(H).item<double>(); }
double backward_gain(const Tensor& H) { return diag::backward_gain(H).item<double>(); }

TEST(Diagnostics, GainsOfHandComputedMatrices) {
  const Tensor identity = torch::eye(4, torch::kDouble);
  EXPECT_DOUBLE_EQ(forward_gain(identity), 1.0);
  EXPECT_DOUBLE_EQ(backward_gain(identity), 1.0);
  const Tensor permutation = matrix({{0, 0, 1}, {1, 0, 0}, {0, 1, 0}});
  EXPECT_DOUBLE_EQ(forward_gain(permutation), 1.0);
  EXPECT_DOUBLE_EQ(backward_gain(permutation), 1.0);
  // Row sums 3 and −1 (forward gain: the largest absolute row sum); column sums 4 and −2.
  const Tensor general = matrix({{1, 2}, {3, -4}});
  EXPECT_DOUBLE_EQ(forward_gain(general), 3.0);
  EXPECT_DOUBLE_EQ(backward_gain(general), 4.0);
  // Absolute value of the sum, not the sum of absolute values: rows sum to 0.5 and 0.5.
  EXPECT_DOUBLE_EQ(forward_gain(matrix({{1.5, -1}, {-1, 1.5}})), 0.5);
  // Batched: one gain per matrix.
  const Tensor both = torch::stack({identity.slice(0, 0, 2).slice(1, 0, 2), general});
  EXPECT_TRUE(torch::equal(diag::forward_gain(both), torch::tensor({1.0, 3.0}, torch::kDouble)));
}

TEST(Diagnostics, CompositeOfThreeMultipliesLaterMapsOnTheLeft) {
  const Tensor A = matrix({{2, 0}, {0, 1}}), B = matrix({{0, 1}, {1, 0}}), C = matrix({{1, 1}, {0, 1}});
  const auto P = diag::composite_maps({A.unsqueeze(0), B.unsqueeze(0), C.unsqueeze(0)});
  ASSERT_EQ(P.size(), 3u);
  // P_0 = C·B·A = [[2, 1], [2, 0]], P_1 = C·B = [[1, 1], [1, 0]], P_2 = C.
  EXPECT_TRUE(torch::equal(P[0][0], matrix({{2, 1}, {2, 0}})));
  EXPECT_TRUE(torch::equal(P[1][0], matrix({{1, 1}, {1, 0}})));
  EXPECT_TRUE(torch::equal(P[2][0], C));
  EXPECT_DOUBLE_EQ(forward_gain(P[0]), 3.0);
  EXPECT_DOUBLE_EQ(backward_gain(P[0]), 4.0);
  EXPECT_DOUBLE_EQ(forward_gain(P[1]), 2.0);
  EXPECT_DOUBLE_EQ(backward_gain(P[2]), 2.0);
}

TEST(Diagnostics, StochasticErrorAndStatistics) {
  const diag::StochasticError e = diag::stochastic_error(matrix({{0.5, 0.5}, {0.25, 0.75}}).unsqueeze(0));
  EXPECT_DOUBLE_EQ(e.row, 0.0);
  EXPECT_DOUBLE_EQ(e.column, 0.25);  // column sums 0.75 and 1.25
  EXPECT_DOUBLE_EQ(e.min_entry, 0.25);
  const diag::Stat s = diag::over_tokens(torch::tensor({1.0, 2.0, 6.0}, torch::kDouble));
  EXPECT_DOUBLE_EQ(s.max, 6.0);
  EXPECT_DOUBLE_EQ(s.mean, 3.0);
}

// 48 sublayers of mHC-lite coefficients from random, far-from-initial parameters: each H_res is a
// convex combination of permutations, so every composite map is doubly stochastic and both its
// gains are 1 to float32 rounding (48 products of ~1e-7 errors).
TEST(Diagnostics, CompositeOfMhcLiteStackIsExactlyNormPreserving) {
  torch::manual_seed(3);
  const int64_t n = 4, C = 16, tokens = 64, depth = 48;
  const Layout shape = layout(Kind::mhc_lite, n, C);
  std::vector<Tensor> H;
  for (int64_t l = 0; l < depth; ++l) {
    const Tensor x = torch::randn({tokens, n, C});
    const Tensor phi = torch::randn({shape.proj_rows, shape.proj_cols}), bias = 3 * torch::randn({shape.bias_size});
    const Tensor alpha = torch::full({shape.alpha_size}, 0.5);
    H.push_back(mhc::pre(x, phi, bias, alpha, Kind::mhc_lite).H_res);
  }
  const auto P = diag::composite_maps(H);
  for (int64_t l = 0; l < depth; ++l) {
    EXPECT_NEAR(diag::forward_gain(P[l]).max().item<double>(), 1.0, 1e-5) << "sublayer " << l;
    EXPECT_NEAR(diag::forward_gain(P[l]).min().item<double>(), 1.0, 1e-5) << "sublayer " << l;
    EXPECT_NEAR(diag::backward_gain(P[l]).max().item<double>(), 1.0, 1e-5) << "sublayer " << l;
    EXPECT_NEAR(diag::backward_gain(P[l]).min().item<double>(), 1.0, 1e-5) << "sublayer " << l;
  }
  // The same stack through HC-like unconstrained matrices is not norm-preserving: the check can fail.
  std::vector<Tensor> loose;
  for (const auto& h : H) loose.push_back(h * 1.05);
  EXPECT_GT(diag::forward_gain(diag::composite_maps(loose)[0]).min().item<double>(), 5.0);  // 1.05^48 ≈ 10.4
}

TEST(Diagnostics, ProbeOfAGptNamesEverySublayer) {
  torch::manual_seed(1);
  GPTConfig config;
  config.vocab = 50, config.dim = 16, config.layers = 3, config.heads = 2, config.seq_len = 8;
  const Tensor tokens = torch::randint(0, 50, {2, 8}, torch::kLong);
  GPT model(config);
  const auto d = diag::probe(model, tokens);
  ASSERT_EQ(d.size(), 6u);
  EXPECT_EQ(d[0].name, "attn 0");
  EXPECT_EQ(d[5].name, "mlp 2");
  for (const auto& s : d) {
    // At initialisation H_res ≈ I (off-diagonal logits −8): row sums are 1 after the last row
    // normalisation, columns are off by the Sinkhorn–Knopp error only.
    EXPECT_NEAR(s.composite_forward_gain.max, 1.0, 1e-5);
    EXPECT_NEAR(s.composite_backward_gain.max, 1.0, 1e-3);
    EXPECT_GT(s.pre_max, s.pre_min);
  }
  EXPECT_FALSE(diag::to_json(d).empty());
  config.residual = Kind::residual, config.streams = 1;
  GPT plain(config);
  EXPECT_TRUE(diag::probe(plain, tokens).empty());
}

}  // namespace
}  // namespace mhc::test
