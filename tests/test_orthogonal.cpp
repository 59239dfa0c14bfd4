// The orthogonal variants' own guarantees (DESIGN.md §11), beyond agreeing with the reference
// (test_ops.cpp) and with finite differences (test_gradcheck.cpp): jpmhc's H_res orthogonal with
// det +1 at any logit scale; its cayley_iters approximation equal to an independent fp64 run of the
// paper's iteration, and drifting from orthogonal where the exact map does not; go-mHC's H_res
// doubly stochastic, and the identity at zero logits; composites of 48 sublayers keeping every
// singular value (jpmhc) or gain (gomhc, kromhc) at 1; and the options' one-line errors.
#include <cmath>
#include <vector>

#include "helpers.h"
#include "mhc/errors.h"

namespace mhc::test {
namespace {

// The coefficients of N random tokens through the fused op, no autograd. Logits scale with `gain`:
// phi's columns give g/r of unit variance, every α is `gain` and the biases are drawn with the same
// spread, so at gain 250 the logits reach about ±1e3.
PreOutput coefficients_at(Variant variant, int64_t n, int64_t N, torch::ScalarType dtype, const VariantOptions& options,
                          double gain, uint64_t seed, int64_t C = 8) {
  torch::manual_seed(seed);
  const Layout l = layout(variant, n, C, options);
  const auto f = torch::TensorOptions().dtype(dtype);
  const Tensor x = torch::randn({N, n, C}, f);
  const Tensor phi = torch::randn({l.proj_rows, l.proj_cols}, f) / std::sqrt(double(l.proj_rows));
  const Tensor bias = torch::randn({l.bias_size}, f) * gain, alpha = torch::full({l.alpha_size}, gain, f);
  torch::NoGradGuard no_grad;
  return mhc::pre(x, phi, bias, alpha, variant, 20, options);
}

double orthogonality_error(const Tensor& H) {  // max |HᵀH − I| over tokens, in double
  const Tensor Hd = H.to(torch::kDouble);
  return (Hd.transpose(1, 2).matmul(Hd) - torch::eye(H.size(1), Hd.options())).abs().max().item<double>();
}

TEST(JPmHC, ExactMapIsOrthogonalWithDeterminantOne) {
  for (int64_t n : {2, 4, 8, 16})
    for (auto [dtype, bound] : {std::pair{torch::kFloat, 1e-5}, {torch::kDouble, 1e-12}}) {
      const Tensor H = coefficients_at(Variant::jpmhc, n, 10000, dtype, {}, 250, 7).H_res;
      EXPECT_LE(orthogonality_error(H), bound) << "n=" << n << " " << dtype;
      const double det_error = (torch::linalg_det(H.to(torch::kDouble)) - 1).abs().max().item<double>();
      EXPECT_LE(det_error, 100 * bound) << "n=" << n << " " << dtype;
    }
}

// The paper's iteration written again from its definition, in plain double loops over one token:
// the LayerNorm read, the res logits Z, B = (β/2)(Z − Zᵀ), Y_0 = I + 2B, Y ← I + B(I + Y), s times.
std::vector<double> paper_iteration(const double* x, const double* phi, const double* bias, const double* alpha, int n,
                                    int64_t C, double beta, int steps) {
  const int64_t K = n * C, m = 3 * n * n;
  double mean = 0, var = 0;
  for (int64_t c = 0; c < K; ++c) mean += x[c] / K;
  for (int64_t c = 0; c < K; ++c) var += (x[c] - mean) * (x[c] - mean) / K;
  const double sd = std::sqrt(var + 1e-6);
  std::vector<double> Z(n * n), B(n * n), Y(n * n), next(n * n);
  for (int e = 0; e < n * n; ++e) {
    const int64_t j = 2 * n * n + e;
    double g = 0;
    for (int64_t c = 0; c < K; ++c) g += (x[c] - mean) / sd * phi[c * m + j];
    Z[e] = alpha[2] * g + bias[j];
  }
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) B[i * n + j] = beta / 2 * (Z[i * n + j] - Z[j * n + i]);
  for (int e = 0; e < n * n; ++e) Y[e] = (e % (n + 1) == 0) + 2 * B[e];
  for (int s = 0; s < steps; ++s) {
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < n; ++j) {
        double acc = i == j;
        for (int k = 0; k < n; ++k) acc += B[i * n + k] * ((k == j) + Y[k * n + j]);
        next[i * n + j] = acc;
      }
    Y = next;
  }
  return Y;
}

TEST(JPmHC, PaperIterationMatchesAnIndependentImplementation) {
  VariantOptions paper;
  paper.cayley_iters = 2;
  const int64_t N = 200, C = 8;
  for (int n : {2, 4, 8, 16}) {
    torch::manual_seed(n);
    const Layout l = layout(Variant::jpmhc, n, C, paper);
    const auto f64 = torch::TensorOptions().dtype(torch::kDouble);
    const Tensor x = torch::randn({N, n, C}, f64), phi = torch::randn({l.proj_rows, l.proj_cols}, f64) * 0.3;
    const Tensor bias = torch::randn({l.bias_size}, f64), alpha = torch::rand({3}, f64) + 0.5;
    torch::NoGradGuard no_grad;
    const Tensor H = mhc::pre(x, phi, bias, alpha, Variant::jpmhc, 20, paper).H_res;
    double worst = 0;
    for (int64_t t = 0; t < N; ++t) {
      const std::vector<double> expected = paper_iteration(x[t].data_ptr<double>(), phi.data_ptr<double>(),
                                                           bias.data_ptr<double>(), alpha.data_ptr<double>(), n, C,
                                                           paper.cayley_scale, paper.cayley_iters);
      for (int e = 0; e < n * n; ++e) worst = std::max(worst, std::abs(H[t].view(-1)[e].item<double>() - expected[e]));
    }
    EXPECT_LE(worst, 1e-12) << "n=" << n;
  }
}

// With ‖B‖ near 1 (logits of tens at β = 0.1) two steps of the series are far from orthogonal;
// the exact map stays orthogonal to rounding on the same tokens.
TEST(JPmHC, PaperIterationDriftsWhereTheExactMapDoesNot) {
  VariantOptions paper;
  paper.cayley_iters = 2;
  for (int64_t n : {4, 8}) {
    const double exact = orthogonality_error(coefficients_at(Variant::jpmhc, n, 1000, torch::kDouble, {}, 10, 3).H_res);
    const double drift = orthogonality_error(coefficients_at(Variant::jpmhc, n, 1000, torch::kDouble, paper, 10, 3).H_res);
    EXPECT_LE(exact, 1e-12) << "n=" << n;
    EXPECT_GE(drift, 1e-1) << "n=" << n;
  }
}

TEST(GoMHC, DoublyStochasticAtEveryStreamCountAndBlockSize) {
  for (int block : {1, 2}) {
    VariantOptions o;
    o.block_size = block;
    for (int64_t n = 1; n * block <= kMaxCayleyDim; ++n) {
      const Tensor H = coefficients_at(Variant::gomhc, n, 2000, torch::kFloat, o, 250, 11).H_res.to(torch::kDouble);
      const std::string what = "n=" + std::to_string(n) + " block_size=" + std::to_string(block);
      EXPECT_LE((H.sum(2) - 1).abs().max().item<double>(), 1e-6) << what << " rows";
      EXPECT_LE((H.sum(1) - 1).abs().max().item<double>(), 1e-6) << what << " columns";
      EXPECT_GE(H.min().item<double>(), 0.0) << what;
    }
  }
}

TEST(GoMHC, ZeroLogitsGiveTheIdentityExactly) {
  for (int block : {1, 2}) {
    VariantOptions o;
    o.block_size = block;
    const int64_t n = 4, C = 8;
    const Layout l = layout(Variant::gomhc, n, C, o);
    const Tensor phi = torch::zeros({l.proj_rows, l.proj_cols}), bias = torch::randn({l.bias_size});
    bias.slice(0, 2 * n).zero_();  // the res logits; pre and post stay random
    torch::NoGradGuard no_grad;
    const Tensor H = mhc::pre(torch::randn({16, n, C}), phi, bias, torch::ones({3}), Variant::gomhc, 20, o).H_res;
    EXPECT_TRUE(torch::equal(H, torch::eye(n).expand({16, n, n}))) << "block_size=" << block;
  }
}

// At θ = 0 go-mHC's H_res = I + O(θ²) has no gradient: a connection initialised there would never
// learn to mix. From the initial parameters every res logit's bias gets a gradient.
TEST(GoMHC, InitialParametersGetAGradient) {
  for (int block : {1, 2}) {
    VariantOptions o;
    o.block_size = block;
    const int64_t n = 4, C = 8;
    HyperConnection hc(HyperConnectionOptions(Variant::gomhc, n, C).variant_options(o).sublayer_index(1));
    torch::manual_seed(5);
    const Tensor x = torch::randn({16, n, C});
    (hc->forward(x, [](const Tensor& h) { return torch::tanh(h); }) * torch::randn({16, n, C})).sum().backward();
    const Tensor res_grad = hc->bias.grad().slice(0, 2 * n).abs();
    EXPECT_GT(res_grad.min().item<double>(), 0.0) << "block_size=" << block << ": a res logit gets no gradient";
  }
}

// The composite P = H_48 ⋯ H_1 of 48 random sublayers, per token, in fp32 as a model forms it.
Tensor composite(Variant variant, int64_t n, int64_t N) {
  Tensor P = torch::eye(n).expand({N, n, n});
  for (int64_t l = 0; l < 48; ++l) P = coefficients_at(variant, n, N, torch::kFloat, {}, 3, 100 + l).H_res.matmul(P);
  return P.to(torch::kDouble);
}

TEST(Composite, OrthogonalKeepsEverySingularValueAtOne) {
  const Tensor sigma = torch::linalg_svdvals(composite(Variant::jpmhc, 4, 256));
  EXPECT_LE((sigma - 1).abs().max().item<double>(), 1e-4);
}

TEST(Composite, ExactlyDoublyStochasticKeepsGainsAtOne) {
  for (Variant variant : {Variant::gomhc, Variant::kromhc}) {
    const Tensor P = composite(variant, 4, 256);
    EXPECT_LE((P.sum(2) - 1).abs().max().item<double>(), 1e-5) << variant_name(variant) << " forward gain";
    EXPECT_LE((P.sum(1) - 1).abs().max().item<double>(), 1e-5) << variant_name(variant) << " backward gain";
  }
}

TEST(OrthogonalOptions, OneLineErrorsNameWhatIsAccepted) {
  VariantOptions steps, blocks;
  steps.cayley_iters = kMaxCayleyIters + 1, blocks.block_size = 3;
  const std::vector<std::pair<std::string, std::string>> cases = {
      {error_of([] { layout(Variant::jpmhc, 17, 8); }), "jpmhc takes 1 to 16 streams, got n = 17"},
      {error_of([] { layout(Variant::gomhc, 9, 8); }),
       "gomhc takes 1 to 8 streams at block_size 2 (d = n·block_size ≤ 16), got n = 9"},
      {error_of([&] { layout(Variant::gomhc, 4, 8, blocks); }), "gomhc takes block_size 1 or 2, got 3"},
      {error_of([&] { layout(Variant::jpmhc, 4, 8, steps); }),
       "jpmhc takes cayley_iters in [0, 8] (0 = the exact Cayley map), got 9"},
      {error_of([] { parse_variant_spec("mhc:block_size=1"); }), "mhc takes no option 'block_size' (accepted: none)"},
      {error_of([] { parse_variant_spec("gomhc:cayley_iters=2"); }),
       "gomhc takes no option 'cayley_iters' (accepted: block_size)"},
      {error_of([&] { layout(Variant::mhc, 4, 8, steps); }), "mhc takes no option 'cayley_iters' (accepted: none)"},
      {error_of([] { parse_variant_spec("gomhc:block_size=two"); }),
       "option block_size of gomhc needs a number, got 'two'"},
      {error_of([] { parse_variant_spec("jpmhc:cayley_scale=-1"); }), "jpmhc takes a finite cayley_scale > 0, got -1.000000"},
  };
  for (const auto& [got, expected] : cases) EXPECT_EQ(got, expected);
  std::string through_op = "(no error)";
  try {
    mhc::pre(torch::randn({2, 9, 4}), torch::zeros({36, 18}), torch::zeros({18}), torch::ones({2}), Variant::gomhc);
  } catch (const std::exception& e) {
    through_op = error_message(e);  // without c10's backtrace
  }
  EXPECT_NE(through_op.find("gomhc takes 1 to 8 streams at block_size 2"), std::string::npos) << through_op;
  EXPECT_EQ(through_op.find('\n'), std::string::npos) << through_op;
}

TEST(OrthogonalOptions, SpecsRoundTrip) {
  VariantOptions o;
  o.cayley_iters = 3, o.cayley_scale = 0.1 + 1e-17 * 3;
  for (const VariantSpec& spec : {VariantSpec{Variant::jpmhc, o}, VariantSpec{Variant::gomhc, {1}}, VariantSpec{Variant::mhc, {}}}) {
    const std::string text = variant_spec(spec.variant, spec.options);
    const VariantSpec back = parse_variant_spec(text);
    EXPECT_EQ(back.variant, spec.variant) << text;
    EXPECT_TRUE(back.options == spec.options) << text;
  }
  EXPECT_EQ(variant_spec(Variant::gomhc, {}), "gomhc");
}

}  // namespace
}  // namespace mhc::test
