// mHC's (and DeepSeek-V4's) H_res at every logit scale against an oracle written straight from DESIGN.md: SK_t(exp(H̃))
// in the linear domain (§2, column-max shift, t × (columns, rows)) and its backward (§3 step 4), in
// long double, whose exponent range (to e^-11355) keeps every iterate at logit spreads of thousands.
// The fused kernels (fp32 and fp64) and the reference (fp32 and fp64) must all agree with it, values
// and gradients, from ordinary logits to ×100 (spreads of several hundred, where a linear fp32 or even
// fp64 iteration underflows to all-zero rows).
#include <cmath>
#include <limits>
#include <random>

#include "../src/kernels/variants/mhc_v4.h"
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


// ---------------------------------------------------------------------------------------------
// DeepSeek-V4's iteration (variants/mhc_v4.h) against an oracle written from DESIGN.md §9 in V4's
// own orientation, comb[j][k] (j the source), in long double: comb = softmax over k + eps, then
// 2t − 1 normalisations by (sum + eps) alternating j, k and ending on j; H_res[k][j] = comb[j][k].
// Its backward is §3's rule for Y = X / (s + e) + f: dX = (dY − Σ dY⊙(Y − f)) / (s + e). The
// kernels' per-token math runs at the eps V4 ships and at two more: 1e-3 (large enough that any eps
// put on the wrong step shows) and 1e-20 (below kLinearFloor: at sharp logits the log-domain path).

struct V4Step {
  bool over_sources;  // normalise along j (V4's sum(-2), this library's rows) or along k
  Real denom_eps, floor;
};

// Returns the iterates, first exp(L) in V4's orientation, last comb; steps[s] makes iterate s + 1.
std::vector<std::vector<Real>> v4_oracle_iterates(const std::vector<Real>& L, int n, int t, Real eps,
                                                  std::vector<V4Step>& steps) {
  std::vector<Real> M(n * n);
  for (int j = 0; j < n; ++j)
    for (int k = 0; k < n; ++k) M[j * n + k] = std::exp(L[k * n + j]);  // L is in H_res [k, j] order
  steps = {{false, 0, eps}};  // the softmax over k, then + eps
  steps.push_back({true, eps, 0});
  for (int it = 1; it < t; ++it) steps.push_back({false, eps, 0}), steps.push_back({true, eps, 0});
  std::vector<std::vector<Real>> iterates{M};
  for (const V4Step& st : steps) {
    for (int a = 0; a < n; ++a) {
      Real sum = 0;
      for (int b = 0; b < n; ++b) sum += M[st.over_sources ? b * n + a : a * n + b];
      for (int b = 0; b < n; ++b) {
        Real& e = M[st.over_sources ? b * n + a : a * n + b];
        e = e / (sum + st.denom_eps) + st.floor;
      }
    }
    iterates.push_back(M);
  }
  return iterates;
}

// ∂⟨D, H_res⟩/∂L, with D and the result in H_res [k, j] order.
std::vector<Real> v4_oracle_gradient(const std::vector<std::vector<Real>>& it, const std::vector<V4Step>& steps,
                                     const std::vector<Real>& D, int n) {
  std::vector<Real> d(n * n);
  for (int j = 0; j < n; ++j)
    for (int k = 0; k < n; ++k) d[j * n + k] = D[k * n + j];
  for (int s = static_cast<int>(steps.size()) - 1; s >= 0; --s) {
    const V4Step& st = steps[s];
    const std::vector<Real>&X = it[s], &Y = it[s + 1];
    for (int a = 0; a < n; ++a) {
      Real sum = 0, dot = 0;
      for (int b = 0; b < n; ++b) {
        const int e = st.over_sources ? b * n + a : a * n + b;
        sum += X[e];
        dot += d[e] * (Y[e] - st.floor);
      }
      for (int b = 0; b < n; ++b) {
        const int e = st.over_sources ? b * n + a : a * n + b;
        d[e] = (d[e] - dot) / (sum + st.denom_eps);
      }
    }
  }
  std::vector<Real> dL(n * n);
  for (int j = 0; j < n; ++j)
    for (int k = 0; k < n; ++k) dL[k * n + j] = d[j * n + k] * it[0][j * n + k];  // through exp
  return dL;
}

struct Eps1e3 {
  static constexpr double value = 1e-3;
};
struct Eps1e20 {
  static constexpr double value = 1e-20;
};

// One token through the kernels' per-token math (g = 0, r = 1, α = 1: the logits are the bias):
// H_pre, H_res and the bias gradient for upstream gradients (dpre, 0, D).
template <typename Eps, typename T>
void v4_kernel(int n, int t, const std::vector<double>& bias, const std::vector<double>& dpre,
               const std::vector<double>& D, std::vector<double>& H_pre, std::vector<double>& H_res,
               std::vector<double>& dbias) {
  using Math = kernels::DeepSeekV4Math<Eps>;
  const int64_t m = 2 * n + n * n;
  std::vector<T> b(bias.begin(), bias.end()), g(m, T(0)), alpha(3, T(1)), dp(dpre.begin(), dpre.end()),
      dpost(n, T(0)), dres(D.begin(), D.end()), db(m, T(0)), da(3, T(0)), dg(m), hp(n);
  const kernels::CoeffVariant<T> v{Variant::mhc_v4, n, m, 1, int64_t(n) * n, t, b.data(), alpha.data(), nullptr, {}};
  std::vector<T> scratch(Math::scratch_size(v));
  kernels::Coeffs<T> out;
  const T r = 1;
  T dr = 0;
  Math::forward(v, g.data(), &r, scratch.data(), out);
  Math::backward(v, g.data(), &r, dp.data(), dpost.data(), dres.data(), scratch.data(), dg.data(), &dr, db.data(),
                 da.data(), hp.data());
  H_pre.assign(out.pre, out.pre + n);
  H_res.assign(out.res, out.res + n * n);
  dbias.assign(db.begin(), db.end());
}

template <typename Eps>
void expect_v4_matches_oracle(const char* eps_name) {
  const Real eps = Eps::value;
  std::mt19937_64 rng(42);
  std::uniform_real_distribution<double> unit(-0.5, 0.5);
  double worst_ratio = 0;
  for (int n : {2, 4, 8})
    for (int t : {1, 2, 20})
      for (double spread : {0.0, 1.0, 20.0, 80.0, 200.0}) {
        std::vector<double> bias(2 * n + n * n), dpre(n), D(n * n);
        for (double& b : bias) b = spread * unit(rng);  // every row's spread at most `spread`
        for (double& d : dpre) d = unit(rng);
        for (double& d : D) d = unit(rng);
        const std::vector<Real> L(bias.begin() + 2 * n, bias.end());
        std::vector<V4Step> steps;
        const auto iterates = v4_oracle_iterates(L, n, t, eps, steps);
        std::vector<Real> want_H(n * n);
        for (int j = 0; j < n; ++j)
          for (int k = 0; k < n; ++k) want_H[k * n + j] = iterates.back()[j * n + k];
        const std::vector<Real> want_d = v4_oracle_gradient(iterates, steps, std::vector<Real>(D.begin(), D.end()), n);
        for (bool fp64 : {true, false}) {
          std::vector<double> H_pre, H_res, dbias;
          if (fp64)
            v4_kernel<Eps, double>(n, t, bias, dpre, D, H_pre, H_res, dbias);
          else
            v4_kernel<Eps, float>(n, t, bias, dpre, D, H_pre, H_res, dbias);
          const double ulp = fp64 ? std::numeric_limits<double>::epsilon() : std::numeric_limits<float>::epsilon();
          // The tolerance of SinkhornOracle above, with max|L| = spread/2.
          const double tol = tolerance(ulp, spread / 2, n, t), dtol = tol * 0.5 * n;
          const std::string what = std::string(eps_name) + (fp64 ? " fp64" : " fp32") + " n=" + std::to_string(n) +
                                   " t=" + std::to_string(t) + " spread=" + std::to_string(spread);
          for (int e = 0; e < n * n; ++e) {
            EXPECT_LE(std::abs(H_res[e] - double(want_H[e])), tol) << what << ": H_res[" << e << "]";
            EXPECT_LE(std::abs(dbias[2 * n + e] - double(want_d[e])), dtol) << what << ": dlogits[" << e << "]";
            worst_ratio = std::max({worst_ratio, std::abs(H_res[e] - double(want_H[e])) / tol,
                                    std::abs(dbias[2 * n + e] - double(want_d[e])) / dtol});
          }
          for (int i = 0; i < n; ++i) {  // H_pre = σ + eps, and dH̃_pre = dpre·σ(1 − σ) (the eps is a constant)
            const Real sig = 1 / (1 + std::exp(-Real(bias[i])));
            EXPECT_NEAR(H_pre[i], double(sig + eps), 4 * ulp) << what << ": H_pre[" << i << "]";
            EXPECT_NEAR(dbias[i], double(dpre[i] * sig * (1 - sig)), 4 * ulp) << what << ": dH̃_pre[" << i << "]";
          }
        }
      }
  std::printf("mhc-v4 eps=%s: worst error / tolerance %.3f\n", eps_name, worst_ratio);
}

TEST(SinkhornV4Oracle, ShippedEps) { expect_v4_matches_oracle<kernels::DeepSeekV4Eps>("1e-6"); }
TEST(SinkhornV4Oracle, LargeEps) { expect_v4_matches_oracle<Eps1e3>("1e-3"); }
TEST(SinkhornV4Oracle, TinyEpsOnLogarithms) { expect_v4_matches_oracle<Eps1e20>("1e-20"); }

// V4 ends on a normalisation along the sources, which in this library's H_res is a row: row k then
// sums to s_k / (s_k + eps) exactly, s_k its sum before that step, and not to 1 (1 − 1e-6 here).
TEST(SinkhornV4Oracle, RowSumsAreSOverSPlusEps) {
  const int n = 4, t = 20;
  std::mt19937_64 rng(7);
  std::normal_distribution<double> normal;
  for (double scale : {1.0, 10.0, 80.0}) {
    std::vector<double> bias(2 * n + n * n), dpre(n, 0.0), D(n * n, 0.0);
    for (double& b : bias) b = scale * normal(rng);
    std::vector<V4Step> steps;
    const auto iterates =
        v4_oracle_iterates(std::vector<Real>(bias.begin() + 2 * n, bias.end()), n, t, kDeepSeekV4Eps, steps);
    const std::vector<Real>& before_last = iterates[iterates.size() - 2];
    std::vector<double> H_pre, H_res, dbias;
    v4_kernel<kernels::DeepSeekV4Eps, double>(n, t, bias, dpre, D, H_pre, H_res, dbias);
    for (int k = 0; k < n; ++k) {
      Real s = 0;
      double row = 0;
      for (int j = 0; j < n; ++j) s += before_last[j * n + k], row += H_res[k * n + j];
      const double want = double(s / (s + Real(kDeepSeekV4Eps)));
      EXPECT_NEAR(row, want, 4 * n * std::numeric_limits<double>::epsilon()) << "scale " << scale << " row " << k;
      EXPECT_GT(std::abs(1 - row), 1e-7) << "scale " << scale << " row " << k << ": the eps is missing";
    }
  }
}

}  // namespace
}  // namespace mhc::test
