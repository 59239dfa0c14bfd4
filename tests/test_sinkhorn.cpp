// mHC's H_res at every logit scale against an oracle written straight from DESIGN.md: SK_t(exp(H̃))
// in the linear domain (§2, column-max shift, t × (columns, rows)) and its backward (§3 step 4), in
// long double, whose exponent range (to e^-11355) keeps every iterate at logit spreads of thousands.
// The fused kernels (fp32 and fp64) and the reference (fp32 and fp64) must all agree with it, values
// and gradients, from ordinary logits to ×100 (spreads of several hundred, where a linear fp32 or even
// fp64 iteration underflows to all-zero rows).
#include <cmath>
#include <limits>

#include "helpers.h"

namespace mhc::test {
namespace {

using Real = long double;

// DESIGN.md §2: M = exp(L − colmax), then t × (columns, rows); t = 0 is exp(L). iterates[s] = M_s.
std::vector<std::vector<Real>> oracle_iterates(const std::vector<Real>& L, int n, int t) {
  std::vector<Real> M(n * n);
  for (int j = 0; j < n; ++j) {
    Real colmax = L[j];
    for (int k = 1; k < n; ++k) colmax = std::max(colmax, L[k * n + j]);
    for (int k = 0; k < n; ++k) M[k * n + j] = std::exp(L[k * n + j] - (t == 0 ? 0 : colmax));
  }
  std::vector<std::vector<Real>> iterates{M};
  for (int s = 0; s < 2 * t; ++s) {
    const bool by_cols = s % 2 == 0;
    for (int a = 0; a < n; ++a) {
      Real sum = 0;
      for (int b = 0; b < n; ++b) sum += M[by_cols ? b * n + a : a * n + b];
      for (int b = 0; b < n; ++b) M[by_cols ? b * n + a : a * n + b] /= sum;
    }
    iterates.push_back(M);
  }
  return iterates;
}

// ∂⟨D, SK_t(exp(L))⟩/∂L by DESIGN.md §3 step 4: for Y = X / s along an axis, dX = (dY − Σ dY⊙Y) / s;
// through exp, dL = dM ⊙ M.
std::vector<Real> oracle_gradient(const std::vector<std::vector<Real>>& it, const std::vector<Real>& D, int n) {
  std::vector<Real> d = D;
  for (int s = static_cast<int>(it.size()) - 1; s >= 1; --s) {
    const bool by_cols = (s - 1) % 2 == 0;
    const std::vector<Real>&X = it[s - 1], &Y = it[s];
    for (int a = 0; a < n; ++a) {
      Real sum = 0, dot = 0;
      for (int b = 0; b < n; ++b) {
        const int e = by_cols ? b * n + a : a * n + b;
        sum += X[e];
        dot += d[e] * Y[e];
      }
      for (int b = 0; b < n; ++b) {
        const int e = by_cols ? b * n + a : a * n + b;
        d[e] = (d[e] - dot) / sum;
      }
    }
  }
  for (int e = 0; e < n * n; ++e) d[e] *= it[0][e];
  return d;
}

std::vector<Real> as_reals(const Tensor& t) {
  const Tensor c = t.detach().to(torch::kDouble).contiguous();
  return std::vector<Real>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

// One token through mhc::pre (fused or reference) in `dtype`: H_res and ∂⟨D, H_res⟩/∂H̃_res, which
// is the gradient of the res block of the bias (H̃ = α·g/r + b).
struct Result {
  std::vector<Real> H_res, dlogits;
};
Result run(const Inputs& in, const Tensor& D, int n, int t, bool fused, torch::ScalarType dtype) {
  const Inputs d = in.to(dtype);
  const PreOutput mix = fused ? mhc::pre(d.x, d.phi, d.bias, d.alpha, Variant::mhc, t)
                              : reference::pre(d.x, d.phi, d.bias, d.alpha, Variant::mhc, t);
  (mix.H_res * D.to(dtype)).sum().backward();
  return {as_reals(mix.H_res), as_reals(d.bias.grad().slice(0, 2 * n))};
}

// The logits DESIGN.md §2 defines, in long double from the inputs as `dtype` holds them.
std::vector<Real> oracle_logits(const Inputs& in, int n, torch::ScalarType dtype) {
  const std::vector<Real> x = as_reals(in.x.to(dtype)), phi = as_reals(in.phi.to(dtype)),
                          bias = as_reals(in.bias.to(dtype)), alpha = as_reals(in.alpha.to(dtype));
  const int64_t K = in.phi.size(0), m = in.phi.size(1);
  Real sq = 0;
  for (Real v : x) sq += v * v;
  const Real r = std::sqrt(sq / K + Real(kRmsEps));
  std::vector<Real> L(n * n);
  for (int e = 0; e < n * n; ++e) {
    Real g = 0;
    for (int64_t k = 0; k < K; ++k) g += x[k] * phi[k * m + 2 * n + e];
    L[e] = alpha[2] * g / r + bias[2 * n + e];
  }
  return L;
}

Real max_abs(const std::vector<Real>& v) {
  Real m = 0;
  for (Real e : v) m = std::max(m, std::abs(e));
  return m;
}

// Tolerance, derived. On logarithms, each of the 2t normalisations subtracts a log-sum-exp of at
// most (max|L| + log n) with a few roundings of that size; Sinkhorn–Knopp is non-expansive in the
// Hilbert metric, so these absolute log errors add rather than grow, and an entry h of H_res carries
// a relative error of their sum. They shrink to O(eps) once the iteration has converged (the
// log-sum-exps go to 0), so in practice the first normalisations dominate; we allow
// 8·eps·(max|L| + (2t + 1)·n), which covers the linear-domain path (≤ (2t + 1)·n roundings of
// relative eps per entry) too. Gradients: the same relative error on the entries times ∑|D|.
double tolerance(double eps, Real max_logit, int n, int t) { return 8 * eps * (double(max_logit) + (2 * t + 1) * n); }

struct Setting {
  int n, t;
};
void PrintTo(const Setting& s, std::ostream* os) { *os << "n=" << s.n << " t=" << s.t; }

class SinkhornOracle : public testing::TestWithParam<Setting> {};

// logits = b exactly (φ = 0) in every precision, so each implementation is judged on Sinkhorn–
// Knopp alone; then φ ≠ 0 in fp64, so the logit formula itself is covered at the same scales.
TEST_P(SinkhornOracle, EveryLogitScale) {
  const auto [n, t] = GetParam();
  double worst_ratio = 0;
  for (double scale : {1.0, 10.0, 30.0, 100.0})
    for (uint64_t seed = 1; seed <= 6; ++seed) {
      Inputs in = make_inputs(Variant::mhc, 1, n, 8, Scenario::random, 1000 * n + seed);
      const Tensor D = torch::randn({1, n, n}, torch::kDouble);
      for (bool with_phi : {false, true}) {
        Inputs case_in = in;
        case_in.bias = (in.bias.detach() * scale).to(torch::kFloat).to(torch::kDouble).requires_grad_(true);  // fp32-exact
        case_in.phi = (with_phi ? in.phi.detach() * scale : torch::zeros_like(in.phi)).requires_grad_(true);
        for (torch::ScalarType dtype : {torch::kFloat, torch::kDouble}) {
          if (with_phi && dtype == torch::kFloat) continue;  // fp32 logits carry their own rounding
          const std::vector<Real> L = oracle_logits(case_in, n, dtype);
          const auto iterates = oracle_iterates(L, n, t);
          const std::vector<Real> want_H = iterates.back(), want_d = oracle_gradient(iterates, as_reals(D), n);
          const double eps = dtype == torch::kFloat ? std::numeric_limits<float>::epsilon()
                                                    : std::numeric_limits<double>::epsilon();
          const double tol = tolerance(eps, max_abs(L), n, t), dtol = tol * double(max_abs(as_reals(D))) * n;
          for (bool fused : {true, false}) {
            const Result got = run(case_in, D, n, t, fused, dtype);
            double err = 0, derr = 0;
            for (int e = 0; e < n * n; ++e) {
              err = std::max(err, double(std::abs(got.H_res[e] - want_H[e])));
              derr = std::max(derr, double(std::abs(got.dlogits[e] - want_d[e])));
            }
            const std::string what = std::string(fused ? "fused " : "reference ") + c10::toString(dtype) +
                                     " n=" + std::to_string(n) + " t=" + std::to_string(t) + " scale=" +
                                     std::to_string(scale) + " seed=" + std::to_string(seed) +
                                     (with_phi ? " phi" : " bias only") + " max|L|=" + std::to_string(double(max_abs(L)));
            EXPECT_LE(err, tol) << what << ": H_res";
            EXPECT_LE(derr, dtol) << what << ": dlogits";
            worst_ratio = std::max({worst_ratio, err / tol, derr / dtol});
          }
        }
      }
    }
  RecordProperty("worst_error_over_tolerance", std::to_string(worst_ratio));
  std::printf("n=%d t=%d: worst error / tolerance %.3f\n", n, t, worst_ratio);
}

INSTANTIATE_TEST_SUITE_P(Settings, SinkhornOracle,
                         testing::Values(Setting{2, 1}, Setting{2, 20}, Setting{2, 100}, Setting{4, 1}, Setting{4, 20},
                                         Setting{4, 100}, Setting{8, 1}, Setting{8, 20}, Setting{8, 100}),
                         [](const testing::TestParamInfo<Setting>& i) {
                           return "n" + std::to_string(i.param.n) + "_t" + std::to_string(i.param.t);
                         });

// The case the old exp floor got wrong: one row whose logits all sit ~200 below their columns'
// maxima. In exact arithmetic the row normalisation restores it to a distribution of its own
// entries; a floor (or an underflowed linear iteration) flattens it to uniform.
TEST(SinkhornOracle, RowFarBelowItsColumnsKeepsItsShape) {
  const int n = 4, t = 20;
  Inputs in = make_inputs(Variant::mhc, 1, n, 8, Scenario::random, 3);
  in.phi = torch::zeros_like(in.phi).requires_grad_(true);
  Tensor b = torch::zeros({2 * n + n * n}, torch::kDouble);
  for (int j = 0; j < n; ++j) b[2 * n + 3 * n + j] = -200.0 + 2.0 * j;  // row 3: -200, -198, -196, -194
  in.bias = b.requires_grad_(true);
  const Tensor D = torch::randn({1, n, n}, torch::kDouble);
  const auto iterates = oracle_iterates(oracle_logits(in, n, torch::kDouble), n, t);
  const std::vector<Real>& want = iterates.back();
  ASSERT_GT(double(want[3 * n + 3] / want[3 * n]), 10.0) << "the oracle's row 3 should not be flat";
  for (torch::ScalarType dtype : {torch::kFloat, torch::kDouble})
    for (bool fused : {true, false}) {
      const Result got = run(in, D, n, t, fused, dtype);
      for (int e = 0; e < n * n; ++e)
        EXPECT_NEAR(double(got.H_res[e]), double(want[e]), 1e-5)
            << (fused ? "fused " : "reference ") << c10::toString(dtype) << " entry " << e;
    }
}

}  // namespace
}  // namespace mhc::test
