// Properties DESIGN.md §2 promises: doubly-stochastic H_res (exact for mHC-lite and KromHC, the
// identity for identity-HC, rows exact and columns converging with t for mHC), and the
// initialisation (HC reproduces a pre-norm residual network exactly; the σ variants start from the
// specified coefficients).
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
PreOutput coefficients_for_random_tokens(Variant variant, int64_t n, int64_t t, double logit_scale, uint64_t seed,
                                         torch::Device device) {
  torch::manual_seed(seed);
  const int64_t N = 10000, C = 8;
  const Layout l = layout(variant, n, C);
  const Tensor x = torch::randn({N, n, C});
  const Tensor phi = torch::randn({l.proj_rows, l.proj_cols}) * logit_scale;
  const Tensor bias = torch::randn({l.bias_size}) * logit_scale;
  const Tensor alpha = torch::ones({l.alpha_size});
  return mhc::pre(x.to(device), phi.to(device), bias.to(device), alpha.to(device), variant, t);
}

// On every backend the fused ops run on (CUDA skipped where there is none).
class DoublyStochastic : public testing::TestWithParam<std::string> {
 protected:
  const torch::Device device{GetParam()};
};
INSTANTIATE_TEST_SUITE_P(Backends, DoublyStochastic, testing::Values("cpu", "cuda"));

// Every given n at ordinary to ±80 logits: rows and columns sum to 1 within 1e-6, no entry < 0.
void expect_exactly_doubly_stochastic(Variant variant, std::initializer_list<int64_t> ns, torch::Device device) {
  for (int64_t n : ns)
    for (double scale : {1.0, 10.0, 80.0}) {
      if (device.is_cuda() && n > kMaxStreamsCuda) continue;
      const StochasticError e = stochastic_error(coefficients_for_random_tokens(variant, n, 0, scale, n, device).H_res);
      const std::string what = std::string(variant_name(variant)) + " n=" + std::to_string(n) + " scale=" + std::to_string(scale);
      EXPECT_LE(e.row, 1e-6) << what;
      EXPECT_LE(e.col, 1e-6) << what;
      EXPECT_GE(e.min_entry, 0.0) << what;
    }
}

TEST_P(DoublyStochastic, MHCLiteIsExact) {
  MHC_SKIP_UNLESS_USABLE(device);
  expect_exactly_doubly_stochastic(Variant::mhc_lite, {2, 3, 4, 5}, device);
}

// Every factorisation shape: a Kronecker product of exactly doubly stochastic factors is exactly
// doubly stochastic.
TEST_P(DoublyStochastic, KromHCIsExact) {
  MHC_SKIP_UNLESS_USABLE(device);
  expect_exactly_doubly_stochastic(Variant::kromhc, {2, 3, 4, 6, 8, 9, 12, 16}, device);
}

TEST_P(DoublyStochastic, IdentityHCIsTheIdentity) {
  MHC_SKIP_UNLESS_USABLE(device);
  const Tensor H = coefficients_for_random_tokens(Variant::ihc, 4, 0, 80.0, 3, device).H_res.cpu();
  EXPECT_TRUE(torch::equal(H, torch::eye(4).expand_as(H)));
}

TEST_P(DoublyStochastic, MHCRowsExactColumnsConverge) {
  MHC_SKIP_UNLESS_USABLE(device);
  double previous = INFINITY;
  for (int64_t t : {1, 5, 20}) {
    const StochasticError e = stochastic_error(coefficients_for_random_tokens(Variant::mhc, 4, t, 1.0, 11, device).H_res);
    EXPECT_LE(e.row, 1e-6) << "t=" << t;
    EXPECT_GE(e.min_entry, 0.0) << "t=" << t;
    EXPECT_LT(e.col, previous) << "column error does not shrink at t=" << t;
    RecordProperty("column_error_t" + std::to_string(t), std::to_string(e.col));
    std::printf("mHC n=4, 10k tokens on %s: t=%2lld  max |row sum - 1| = %.2e  max |col sum - 1| = %.2e\n",
                device.str().c_str(), static_cast<long long>(t), e.row, e.col);
    previous = e.col;
  }
  // Rows stay exact even with extreme logits and n = 8.
  EXPECT_LE(stochastic_error(coefficients_for_random_tokens(Variant::mhc, 8, 20, 80.0, 12, device).H_res).row, 1e-6);
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
        HyperConnection hc(HyperConnectionOptions(Variant::hc, n, C).sublayer_index(l).use_reference(use_reference));
        x = hc->forward(x, sublayer(l));
      }
      for (int64_t k = 0; k < n; ++k)
        EXPECT_TRUE(torch::equal(x.select(-2, k), z)) << "n=" << n << " stream " << k << " reference=" << use_reference;
    }
}

// mHC-lite's closed form at initialisation over f items: the identity's logit 0, the other f!−1 at
// −8. (f−1)! permutations map i to each j ≠ i; the identity and (f−1)!−1 others fix i.
Tensor permutation_mixture_at_init(int64_t f) {
  const double e8 = std::exp(-8.0), z = 1 + (factorial(f) - 1) * e8, fixing = factorial(f - 1);
  Tensor U = torch::full({f, f}, fixing * e8 / z);
  U.diagonal().fill_((1 + (fixing - 1) * e8) / z);
  return U;
}

// The σ variants at initialisation (φ = 0, paper biases): H_pre = σ(±1), H_post = 2σ(±1) with the
// + on stream l mod n, and H_res the closed form of the −8 off-diagonal / non-identity logits.
TEST(Initialisation, SigmaVariantsStartFromTheSpecifiedCoefficients) {
  const double e8 = std::exp(-8.0), s_hi = 1 / (1 + std::exp(-1.0)), s_lo = 1 / (1 + std::exp(1.0));
  const std::vector<std::pair<Variant, std::vector<int64_t>>> cases = {
      {Variant::mhc, {1, 2, 4}}, {Variant::mhc_lite, {1, 2, 4}}, {Variant::kromhc, {2, 4, 6, 12}}, {Variant::ihc, {1, 2, 4}}};
  for (const auto& [variant, ns] : cases)
    for (int64_t n : ns)
      for (int64_t l : {0, 1, 5}) {
        HyperConnection hc(HyperConnectionOptions(variant, n, 16).sublayer_index(l));
        const PreOutput mix = hc->pre(torch::randn({2, 9, n, 16}));
        Tensor want_pre = torch::full({n}, n == 1 ? s_hi : s_lo), want_res = torch::eye(n);
        want_pre[l % n] = s_hi;
        if (variant == Variant::mhc) {  // symmetric, equal row and column sums: one SK step is exact
          const double z = 1 + (n - 1) * e8;
          want_res.fill_(e8 / z);
          want_res.diagonal().fill_(1 / z);
        } else if (variant == Variant::mhc_lite) {
          want_res = permutation_mixture_at_init(n);
        } else if (variant == Variant::kromhc) {  // U_1 ⊗ … ⊗ U_K over n's factors, the 2s first
          want_res = torch::ones({1, 1});
          for (int64_t f : {2, 3})
            for (int64_t rest = n; rest % f == 0; rest /= f) want_res = torch::kron(want_res, permutation_mixture_at_init(f));
        }
        const std::string what = std::string(variant_name(variant)) + " n=" + std::to_string(n) + " l=" + std::to_string(l);
        EXPECT_LE(max_abs_diff(mix.H_pre, want_pre.expand_as(mix.H_pre)), 1e-6) << what;
        EXPECT_LE(max_abs_diff(mix.H_post, 2 * want_pre.expand_as(mix.H_post)), 1e-6) << what;
        EXPECT_LE(max_abs_diff(mix.H_res, want_res.expand_as(mix.H_res)), 1e-6) << what;
        // "≈ I": within (n-1)·e^-8 (mHC) or (n!-1)·e^-8 (mHC-lite) of the identity.
        if (variant == Variant::mhc || variant == Variant::mhc_lite) {
          const double bound = (variant == Variant::mhc ? n - 1 : factorial(n) - 1) * e8;
          EXPECT_LE(max_abs_diff(mix.H_res, torch::eye(n).expand_as(mix.H_res)), bound + 1e-6) << what;
        }
      }
}

TEST(Initialisation, ZeroBiasInitIsAPlainResidualMean) {
  HyperConnection hc(HyperConnectionOptions(Variant::mhc, 4, 8).bias_init(BiasInit::named("zero")));
  const PreOutput mix = hc->pre(torch::randn({5, 4, 8}));
  EXPECT_LE(max_abs_diff(mix.H_res, torch::full({5, 4, 4}, 0.25)), 1e-7);
  EXPECT_LE(max_abs_diff(mix.H_post, torch::ones({5, 4})), 1e-7);
}

}  // namespace
}  // namespace mhc::test
