// Properties DESIGN.md §2 promises: doubly-stochastic H_res (exact for mHC-lite, rows exact and
// columns converging with t for mHC), and the initialisation (HC reproduces a pre-norm residual
// network exactly; mHC/mHC-lite start from the specified coefficients).
#include <cmath>

#include "helpers.h"

namespace mhc::test {
namespace {

struct StochasticError {
  double row, col, min_entry;
};

StochasticError stochastic_error(const Tensor& H_res) {  // [N, n, n]
  const Tensor H = H_res.to(torch::kDouble);
  return {(H.sum(2) - 1).abs().max().item<double>(), (H.sum(1) - 1).abs().max().item<double>(),
          H.min().item<double>()};
}

// 10k tokens whose H_res logits range from ordinary to ±80.
PreOutput coefficients_for_random_tokens(Kind kind, int64_t n, int64_t t, double logit_scale, uint64_t seed,
                                         torch::Device device) {
  torch::manual_seed(seed);
  const int64_t N = 10000, C = 8;
  const Layout l = layout(kind, n, C);
  const Tensor x = torch::randn({N, n, C});
  const Tensor phi = torch::randn({l.proj_rows, l.proj_cols}) * logit_scale;
  const Tensor bias = torch::randn({l.bias_size}) * logit_scale;
  const Tensor alpha = torch::ones({l.alpha_size});
  return mhc::pre(x.to(device), phi.to(device), bias.to(device), alpha.to(device), kind, t);
}

// On every backend the fused ops run on (CUDA skipped where there is none).
class DoublyStochastic : public testing::TestWithParam<std::string> {
 protected:
  const torch::Device device{GetParam()};
};
INSTANTIATE_TEST_SUITE_P(Backends, DoublyStochastic, testing::Values("cpu", "cuda"));

TEST_P(DoublyStochastic, MHCLiteIsExact) {
  MHC_SKIP_UNLESS_USABLE(device);
  for (int64_t n : {2, 3, 4, 5})
    for (double scale : {1.0, 10.0, 80.0}) {
      const StochasticError e = stochastic_error(coefficients_for_random_tokens(Kind::mhc_lite, n, 0, scale, n, device).H_res);
      EXPECT_LE(e.row, 1e-6) << "n=" << n << " scale=" << scale;
      EXPECT_LE(e.col, 1e-6) << "n=" << n << " scale=" << scale;
      EXPECT_GE(e.min_entry, 0.0) << "n=" << n << " scale=" << scale;
    }
}

TEST_P(DoublyStochastic, MHCRowsExactColumnsConverge) {
  MHC_SKIP_UNLESS_USABLE(device);
  double previous = INFINITY;
  for (int64_t t : {1, 5, 20}) {
    const StochasticError e = stochastic_error(coefficients_for_random_tokens(Kind::mhc, 4, t, 1.0, 11, device).H_res);
    EXPECT_LE(e.row, 1e-6) << "t=" << t;
    EXPECT_GE(e.min_entry, 0.0) << "t=" << t;
    EXPECT_LT(e.col, previous) << "column error does not shrink at t=" << t;
    RecordProperty("column_error_t" + std::to_string(t), std::to_string(e.col));
    std::printf("mHC n=4, 10k tokens on %s: t=%2lld  max |row sum - 1| = %.2e  max |col sum - 1| = %.2e\n",
                device.str().c_str(), static_cast<long long>(t), e.row, e.col);
    previous = e.col;
  }
  // Rows stay exact even with extreme logits and n = 8.
  EXPECT_LE(stochastic_error(coefficients_for_random_tokens(Kind::mhc, 8, 20, 80.0, 12, device).H_res).row, 1e-6);
}

// A small stack of sublayers F_l(z) = W_l·RMSNorm(z) on a plain residual stream and, with the same
// F_l, through HC at initialisation: every stream of HC equals the residual stream, bit for bit.
TEST(Initialisation, HCIsExactlyAPreNormResidualNetwork) {
  torch::manual_seed(5);
  const int64_t C = 24, L = 6, B = 3, T = 7;
  std::vector<torch::nn::Linear> F;
  for (int64_t l = 0; l < L; ++l) F.emplace_back(torch::nn::Linear(C, C));
  auto sublayer = [&](int64_t l) {
    return [&, l](const Tensor& h) { return F[l]->forward(h / (h.square().mean(-1, true) + 1e-6).sqrt()); };
  };
  const Tensor e = torch::randn({B, T, C});
  Tensor z = e;
  for (int64_t l = 0; l < L; ++l) z = z + sublayer(l)(z);
  for (int64_t n : {1, 2, 4})
    for (bool use_reference : {false, true}) {
      Tensor x = expand_streams(e, n);
      for (int64_t l = 0; l < L; ++l) {
        HyperConnection hc(HyperConnectionOptions(Kind::hc, n, C).sublayer_index(l).use_reference(use_reference));
        x = hc->forward(x, sublayer(l));
      }
      for (int64_t k = 0; k < n; ++k)
        EXPECT_TRUE(torch::equal(x.select(-2, k), z)) << "n=" << n << " stream " << k << " reference=" << use_reference;
    }
}

// mHC and mHC-lite at initialisation (φ = 0, paper biases): H_pre = σ(±1), H_post = 2σ(±1) with
// the + on stream l mod n, and H_res the closed form of the −8 off-diagonal / non-identity logits.
TEST(Initialisation, MHCAndLiteStartFromTheSpecifiedCoefficients) {
  const double e8 = std::exp(-8.0), s_hi = 1 / (1 + std::exp(-1.0)), s_lo = 1 / (1 + std::exp(1.0));
  for (Kind kind : {Kind::mhc, Kind::mhc_lite})
    for (int64_t n : {1, 2, 4})
      for (int64_t l : {0, 1, 5}) {
        HyperConnection hc(HyperConnectionOptions(kind, n, 16).sublayer_index(l));
        const PreOutput mix = hc->pre(torch::randn({2, 9, n, 16}));
        Tensor want_pre = torch::full({n}, n == 1 ? s_hi : s_lo), want_res = torch::zeros({n, n});
        want_pre[l % n] = s_hi;
        if (kind == Kind::mhc) {  // symmetric, equal row and column sums: one SK step is exact
          const double z = 1 + (n - 1) * e8;
          want_res.fill_(e8 / z);
          want_res.diagonal().fill_(1 / z);
        } else {  // (n-1)! permutations map i to each j ≠ i; the identity and (n-1)!-1 others fix i
          const double z = 1 + (factorial(n) - 1) * e8, f = factorial(n - 1);
          want_res.fill_(f * e8 / z);
          want_res.diagonal().fill_((1 + (f - 1) * e8) / z);
        }
        const std::string what = std::string(kind_name(kind)) + " n=" + std::to_string(n) + " l=" + std::to_string(l);
        EXPECT_LE(max_abs_diff(mix.H_pre, want_pre.expand_as(mix.H_pre)), 1e-6) << what;
        EXPECT_LE(max_abs_diff(mix.H_post, 2 * want_pre.expand_as(mix.H_post)), 1e-6) << what;
        EXPECT_LE(max_abs_diff(mix.H_res, want_res.expand_as(mix.H_res)), 1e-6) << what;
        // "≈ I": within (n-1)·e^-8 (mHC) or (n!-1)·e^-8 (mHC-lite) of the identity.
        const double bound = (kind == Kind::mhc ? n - 1 : factorial(n) - 1) * e8;
        EXPECT_LE(max_abs_diff(mix.H_res, torch::eye(n).expand_as(mix.H_res)), bound + 1e-6) << what;
      }
}

TEST(Initialisation, ZeroBiasInitIsAPlainResidualMean) {
  HyperConnection hc(HyperConnectionOptions(Kind::mhc, 4, 8).bias_init(BiasInit::named("zero")));
  const PreOutput mix = hc->pre(torch::randn({5, 4, 8}));
  EXPECT_LE(max_abs_diff(mix.H_res, torch::full({5, 4, 4}, 0.25)), 1e-7);
  EXPECT_LE(max_abs_diff(mix.H_post, torch::ones({5, 4})), 1e-7);
}

}  // namespace
}  // namespace mhc::test
