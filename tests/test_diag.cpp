// The diagnostics (mhc/diag.h) against matrices and states whose values are worked out by hand: the
// signal gains, the exactness of mHC-lite's composite map, the stream diagnostics and the collapse
// alarm; and the per-sublayer diagnostics of a GPT.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <fstream>
#include <limits>

#include "mhc/diag.h"
#include "mhc/ops.h"
#include "mhc/run_log.h"

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

// 48 sublayers of exact coefficients (mHC-lite, KromHC) from random, far-from-initial parameters:
// each H_res is a convex combination of permutations (KromHC's: a product of such), so every
// composite map is doubly stochastic and both its gains are 1 to float32 rounding (48 products of
// ~1e-7 errors).
void expect_exact_composite(Variant variant, int64_t n) {
  torch::manual_seed(3);
  const int64_t C = 16, tokens = 64, depth = 48;
  const Layout shape = layout(variant, n, C);
  std::vector<Tensor> H;
  for (int64_t l = 0; l < depth; ++l) {
    const Tensor x = torch::randn({tokens, n, C});
    const Tensor phi = torch::randn({shape.proj_rows, shape.proj_cols}), bias = 3 * torch::randn({shape.bias_size});
    const Tensor alpha = torch::full({shape.alpha_size}, 0.5);
    H.push_back(mhc::pre(x, phi, bias, alpha, variant).H_res);
  }
  const auto P = diag::composite_maps(H);
  const std::string what = std::string(variant_name(variant)) + " n=" + std::to_string(n) + " sublayer ";
  for (int64_t l = 0; l < depth; ++l) {
    EXPECT_NEAR(diag::forward_gain(P[l]).max().item<double>(), 1.0, 1e-5) << what << l;
    EXPECT_NEAR(diag::forward_gain(P[l]).min().item<double>(), 1.0, 1e-5) << what << l;
    EXPECT_NEAR(diag::backward_gain(P[l]).max().item<double>(), 1.0, 1e-5) << what << l;
    EXPECT_NEAR(diag::backward_gain(P[l]).min().item<double>(), 1.0, 1e-5) << what << l;
  }
  // The same stack through HC-like unconstrained matrices is not norm-preserving: the check can fail.
  std::vector<Tensor> loose;
  for (const auto& h : H) loose.push_back(h * 1.05);
  EXPECT_GT(diag::forward_gain(diag::composite_maps(loose)[0]).min().item<double>(), 5.0);  // 1.05^48 ≈ 10.4
}

TEST(Diagnostics, CompositeOfMhcLiteStackIsExactlyNormPreserving) { expect_exact_composite(Variant::mhc_lite, 4); }

TEST(Diagnostics, CompositeOfKromHCStackIsExactlyNormPreserving) {
  for (int64_t n : {4, 12, 16}) expect_exact_composite(Variant::kromhc, n);
}

// ---- Stream diagnostics ----

constexpr double kEps = std::numeric_limits<double>::epsilon();

// A state [n, C] whose stream i is norms[i] times the unit vector e_i: orthogonal streams.
Tensor orthogonal_streams(const std::vector<double>& norms, int64_t C = 8) {
  Tensor x = torch::zeros({static_cast<int64_t>(norms.size()), C}, torch::kDouble);
  for (size_t i = 0; i < norms.size(); ++i) x[i][i] = norms[i];
  return x;
}

// The entropy, in nats, of a distribution given by non-negative weights.
double entropy_of(std::vector<double> weights) {
  double total = 0, h = 0;
  for (double w : weights) total += w;
  for (double w : weights)
    if (w > 0) h -= w / total * std::log(w / total);
  return h;
}

TEST(StreamDiagnostics, SharesOfTheStateEnergy) {
  // Streams of norms 3, 4, 0: energies 9, 16, 0 of 25.
  const Tensor shares = diag::stream_shares(orthogonal_streams({3, 4, 0}));
  EXPECT_DOUBLE_EQ(shares[0].item<double>(), 9.0 / 25);
  EXPECT_DOUBLE_EQ(shares[1].item<double>(), 16.0 / 25);
  EXPECT_DOUBLE_EQ(shares[2].item<double>(), 0.0);
  // The share is of energy, not of direction: the same norms in one direction share alike.
  const Tensor v = torch::randn({8}, torch::kDouble);
  EXPECT_TRUE(torch::allclose(diag::stream_shares(torch::stack({3 * v, 4 * v})),
                              torch::tensor({9.0 / 25, 16.0 / 25}, torch::kDouble), 0, 4 * kEps));
  EXPECT_EQ(diag::stream_shares(torch::zeros({2, 4})).sum().item<double>(), 0.0);  // a zero state: no NaN
}

TEST(StreamDiagnostics, EffectiveRankOfHandMadeStates) {
  torch::manual_seed(5);
  const int64_t n = 4;
  const Tensor v = torch::randn({32}, torch::kDouble);
  // Identical streams, and proportional ones: one direction, rank 1 exactly (the rounding-level
  // eigenvalues of the Gram matrix count as 0).
  EXPECT_EQ(diag::effective_rank(v.expand({n, 32})).item<double>(), 1.0);
  EXPECT_EQ(diag::effective_rank(torch::stack({v, -2 * v, 0.5 * v, 3 * v})).item<double>(), 1.0);
  // n orthogonal streams of equal norm: rank n, to the rounding of ln n and exp (a few ulps of n).
  EXPECT_NEAR(diag::effective_rank(orthogonal_streams({2, 2, 2, 2})).item<double>(), n, 8 * n * kEps);
  // ... also when the orthogonal directions are not the axes: a random orthogonal basis.
  const Tensor Q = std::get<0>(torch::linalg_qr(torch::randn({32, n}, torch::kDouble))).t();  // [n, 32], orthonormal rows
  EXPECT_NEAR(diag::effective_rank(5 * Q).item<double>(), n, 1e-12);
  // Orthogonal streams of norms 6, 1, 1, 1: singular values 6, 1, 1, 1, so p = 6/9, 1/9, 1/9, 1/9.
  EXPECT_NEAR(diag::effective_rank(orthogonal_streams({6, 1, 1, 1})).item<double>(), std::exp(entropy_of({6, 1, 1, 1})),
              8 * n * kEps);
  // Any state, against singular values from an SVD (an independent route): batched, [tokens, n, C].
  const Tensor scales = torch::tensor({1.0, 0.3, 0.05, 0.001}, torch::kDouble).view({n, 1});
  const Tensor x = torch::randn({16, n, 32}, torch::kDouble) * scales;
  const Tensor sigma = torch::linalg_svdvals(x);
  const Tensor p = sigma / sigma.sum(-1, true);
  const Tensor expected = (-(p * p.log()).sum(-1)).exp();
  EXPECT_TRUE(torch::allclose(diag::effective_rank(x), expected, 1e-9, 0)) << diag::effective_rank(x) - expected;
  EXPECT_TRUE((diag::effective_rank(x) > 1).all().item<bool>() && (diag::effective_rank(x) < n).all().item<bool>());
  // A token whose state overflowed is NaN; its neighbours keep their rank.
  Tensor overflowed = torch::stack({orthogonal_streams({1, 1, 1, 1}), orthogonal_streams({1, 1, 1, 1})});
  overflowed[1][2][0] = std::numeric_limits<double>::infinity();
  const Tensor ranks = diag::effective_rank(overflowed);
  EXPECT_NEAR(ranks[0].item<double>(), n, 8 * n * kEps);
  EXPECT_TRUE(std::isnan(ranks[1].item<double>()));
}

TEST(StreamDiagnostics, DistanceOfHResFromIdentityAndUniform) {
  for (const int64_t n : {2, 4}) {
    const Tensor I = torch::eye(n, torch::kDouble), uniform = torch::full({n, n}, 1.0 / n, torch::kDouble);
    EXPECT_EQ(diag::frobenius_distance(I, I).item<double>(), 0.0);
    EXPECT_EQ(diag::frobenius_distance(uniform, uniform).item<double>(), 0.0);
    // ||I − J/n||_F² = n (1 − 1/n)² + (n² − n) / n² = n − 1.
    EXPECT_NEAR(diag::frobenius_distance(I, uniform).item<double>(), std::sqrt(n - 1.0), 4 * kEps * n);
  }
  // The swap of two streams: four entries off by 1.
  EXPECT_DOUBLE_EQ(diag::frobenius_distance(matrix({{0, 1}, {1, 0}}), torch::eye(2, torch::kDouble)).item<double>(), 2.0);
}

TEST(StreamDiagnostics, EntropyOfCoefficients) {
  EXPECT_NEAR(diag::coefficient_entropy(torch::full({4}, 0.7, torch::kDouble)).item<double>(), std::log(4.0), 4 * kEps);
  EXPECT_EQ(diag::coefficient_entropy(torch::tensor({0.0, 1.0, 0.0}, torch::kDouble)).item<double>(), 0.0);
  EXPECT_NEAR(diag::coefficient_entropy(torch::tensor({1.46, 0.54, 0.54, 0.54}, torch::kDouble)).item<double>(),
              entropy_of({1.46, 0.54, 0.54, 0.54}), 4 * kEps);
  // HC's coefficients may be negative: weighted by their magnitude.
  EXPECT_NEAR(diag::coefficient_entropy(torch::tensor({-1.0, 1.0}, torch::kDouble)).item<double>(), std::log(2.0), 4 * kEps);
}

// Records of a 3-sublayer stack whose every input holds `state` [n, C] (scaled per token: the
// stream diagnostics do not depend on the scale), with H_res = I and uniform H_pre, H_post.
std::vector<SublayerRecord> records_of(const Tensor& state) {
  const int64_t n = state.size(0), tokens = 6;
  const Tensor scale = torch::linspace(0.5, 3, tokens, torch::kDouble).view({1, tokens, 1, 1});
  std::vector<SublayerRecord> records(3);
  for (auto& r : records) {
    r.x = (state.unsqueeze(0).unsqueeze(0) * scale).to(torch::kFloat);  // [B = 1, T, n, C]
    r.mix.H_pre = torch::full({tokens, n}, 1.0 / n);
    r.mix.H_post = torch::ones({tokens, n});
    r.mix.H_res = torch::eye(n).expand({tokens, n, n});
  }
  return records;
}

TEST(StreamDiagnostics, DiagnoseReadsTheRecordedStates) {
  const auto d = diag::diagnose(records_of(orthogonal_streams({6, 1, 1, 1})));
  ASSERT_EQ(d.size(), 3u);
  for (const auto& s : d) {
    EXPECT_EQ(s.streams, 4);
    EXPECT_NEAR(s.share_max, 36.0 / 39, 1e-12);
    EXPECT_NEAR(s.share_min, 1.0 / 39, 1e-12);
    EXPECT_NEAR(s.effective_rank, std::exp(entropy_of({6, 1, 1, 1})), 1e-12);
    EXPECT_EQ(s.identity_distance, 0.0);  // H_res = I
    EXPECT_NEAR(s.uniform_distance, std::sqrt(3.0), 1e-12);
    EXPECT_NEAR(s.pre_entropy, std::log(4.0), 1e-12);
    EXPECT_NEAR(s.post_entropy, std::log(4.0), 1e-12);
  }
  const std::string json = diag::to_json(d).dump();
  for (const char* key : {"share_max", "share_min", "effective_rank", "h_res_to_identity", "h_res_to_uniform",
                          "pre_entropy", "post_entropy"})
    EXPECT_NE(json.find(std::string("\"") + key + "\""), std::string::npos) << key;
}

// ---- The collapse alarm ----

diag::StreamSummary summary_of(const Tensor& state) {
  return diag::summarize_streams(diag::diagnose(records_of(state)));
}

TEST(CollapseAlarm, OneDominantStreamTripsItAfterKDiagnostics) {
  const diag::CollapseThresholds thresholds;  // the defaults: rank 1.2, share 0.9, after 5
  // Stream 0 with norm 6 against three of norm 1: share 36/39 = 0.92 > 0.9; the rank (2.7) is fine.
  const diag::StreamSummary dominant = summary_of(orthogonal_streams({6, 1, 1, 1}));
  EXPECT_GT(dominant.largest_share, thresholds.share);
  EXPECT_GT(dominant.effective_rank, thresholds.rank);
  EXPECT_TRUE(diag::collapsed(dominant, thresholds));
  // Norm 5 instead: 25/28 = 0.89, just below the threshold.
  EXPECT_FALSE(diag::collapsed(summary_of(orthogonal_streams({5, 1, 1, 1})), thresholds));

  diag::CollapseAlarm alarm(thresholds);
  for (int64_t k = 1; k < thresholds.after; ++k) {
    EXPECT_FALSE(alarm.observe(dominant)) << k;
    EXPECT_FALSE(alarm.firing());
  }
  EXPECT_TRUE(alarm.observe(dominant));  // the k-th in a row: the moment to warn
  EXPECT_TRUE(alarm.firing());
  EXPECT_NE(alarm.warning(50).find("largest stream share 0.923 > 0.9 for 5 diagnostics in a row"), std::string::npos)
      << alarm.warning(50);
  EXPECT_FALSE(alarm.observe(dominant));  // warned once per episode, still firing
  EXPECT_TRUE(alarm.firing());
  EXPECT_NE(alarm.to_json().dump().find("\"streak\":6,\"alarm\":true"), std::string::npos) << alarm.to_json();
  // One healthy diagnostic breaks the streak; the count starts again.
  EXPECT_FALSE(alarm.observe(summary_of(orthogonal_streams({1, 1, 1, 1}))));
  EXPECT_FALSE(alarm.firing());
  EXPECT_EQ(alarm.streak(), 0);
}

TEST(CollapseAlarm, IdenticalStreamsTripItByRankAndOneStreamNever) {
  const diag::CollapseThresholds thresholds{1.2, 0.9, 2};
  const Tensor v = torch::randn({8}, torch::kDouble);
  const diag::StreamSummary copies = summary_of(v.expand({4, 8}).clone());
  EXPECT_NEAR(copies.effective_rank, 1.0, 1e-12);
  EXPECT_NEAR(copies.largest_share, 0.25, 1e-12);  // balanced energies: only the rank sees it
  diag::CollapseAlarm alarm(thresholds);
  EXPECT_FALSE(alarm.observe(copies));
  EXPECT_TRUE(alarm.observe(copies));
  EXPECT_NE(alarm.warning(7).find("effective rank 1 < 1.2 for 2 diagnostics"), std::string::npos) << alarm.warning(7);
  // Orthogonal streams of equal norm are the healthy extreme.
  EXPECT_FALSE(diag::collapsed(summary_of(orthogonal_streams({1, 1, 1, 1})), thresholds));
  // One stream: rank 1 and share 1 by definition, nothing that could collapse.
  const diag::StreamSummary one = summary_of(orthogonal_streams({1}));
  EXPECT_EQ(one.streams, 1);
  EXPECT_FALSE(diag::collapsed(one, thresholds));
}

TEST(CollapseAlarm, AResumedRunContinuesTheStreakOfItsMetrics) {
  const std::string path = testing::TempDir() + "collapse_metrics.jsonl";
  EXPECT_EQ(train::collapse_streak(path + ".missing"), 0);
  std::ofstream(path) << "{\"step\":10,\"collapse\":{\"streak\":1,\"alarm\":false}}\n"
                      << "{\"step\":15}\n"
                      << "{\"step\":20,\"collapse\":{\"streak\":2,\"alarm\":false}}\n"
                      << "{\"step\":21,\"loss\":";  // a line cut by a crash
  EXPECT_EQ(train::collapse_streak(path), 2);
  diag::CollapseAlarm alarm({1.2, 0.9, 3}, train::collapse_streak(path));
  EXPECT_TRUE(alarm.observe(summary_of(orthogonal_streams({6, 1, 1, 1}))));  // the third in a row
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
    // φ = 0 at initialisation, so every token's coefficients are the biases' (float32 rounding
    // aside): H_res has e^0 on the diagonal and e^-8 off it, already doubly stochastic after one
    // normalisation (e^-8 / (1 + 3e^-8) off the diagonal); H_pre = σ(±1) and H_post = 2σ(±1),
    // the same distribution once normalised. 1e-6: float32 rounding of 16 entries.
    const double off = std::exp(-8.0) / (1 + 3 * std::exp(-8.0)), diagonal = 1 - 3 * off;
    EXPECT_NEAR(s.identity_distance, std::sqrt(4 * (1 - diagonal) * (1 - diagonal) + 12 * off * off), 1e-6);
    EXPECT_NEAR(s.uniform_distance,
                std::sqrt(4 * (diagonal - 0.25) * (diagonal - 0.25) + 12 * (off - 0.25) * (off - 0.25)), 1e-6);
    const double sigma = 1 / (1 + std::exp(-1.0));
    EXPECT_NEAR(s.pre_entropy, entropy_of({sigma, 1 - sigma, 1 - sigma, 1 - sigma}), 1e-6);
    EXPECT_NEAR(s.post_entropy, s.pre_entropy, 1e-6);
    EXPECT_GE(s.effective_rank, 1.0);
    EXPECT_LE(s.effective_rank, 4.0);
  }
  // Sublayer 0's input is n copies of the embedding: rank 1 and equal shares, by construction.
  EXPECT_NEAR(d[0].effective_rank, 1.0, 1e-12);
  EXPECT_NEAR(d[0].share_max, 0.25, 1e-12);
  EXPECT_NEAR(d[0].share_min, 0.25, 1e-12);
  EXPECT_FALSE(diag::to_json(d).empty());
  config.variant = Variant::residual, config.streams = 1;
  GPT plain(config);
  EXPECT_TRUE(diag::probe(plain, tokens).empty());
}

}  // namespace
}  // namespace mhc::test
