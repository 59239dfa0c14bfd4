// go-mHC's H_res (arXiv 2604.02309; DESIGN.md §11): exactly doubly stochastic at any n through an
// orthogonal matrix. With block size s and d = n·s, the res logits are the strict upper triangle
// of a skew matrix A (row-major), O = (I − A)(I + A)⁻¹ = Cayley(−A) (cayley.h), and
//     H_res[i, j] = (1/s)·Σ_{k, l < s} O[i·s + k, j·s + l]²:
// O's rows and columns have unit norm, so H_res's rows and columns sum to 1 (s = 1: the
// orthostochastic matrices; s = 2 reaches more of the Birkhoff polytope). Zero logits give O = I
// and H_res = I exactly, but there H_res is stationary: it is I + O(θ²), so no gradient reaches the
// logits and a model started there never mixes its streams (a 48-sublayer run stayed at H_res = I
// to the last bit). The initial logits are therefore kInitialAngle, not 0. H_pre and H_post are
// the σ family's (common.h).
#pragma once

#include "cayley.h"
#include "common.h"

namespace mhc::kernels {

struct OrthostochasticMixing {
  // Every θ_ab starts here: H_res = I − O(d·θ²) (≈ 1e-3 of off-diagonal mass at d = 8, about what
  // mHC's −8 logits leave), with a gradient ∝ θ that Adam's normalisation turns into full-size steps.
  static constexpr double kInitialAngle = 0.01;

  static int64_t res_size(int64_t n, const VariantOptions& options) {
    const int64_t d = n * options.block_size;
    return d * (d - 1) / 2;
  }
  template <typename T>
  static MHC_HD int64_t work_size(const CoeffVariant<T>&) { return 0; }
  static void initial_res_logits(int64_t n, double, float* logits, const VariantOptions& options) {
    for (int64_t k = 0; k < res_size(n, options); ++k) logits[k] = float(kInitialAngle);
  }

  // O = Cayley(−A) from the triangle θ, in double.
  template <typename T>
  static MHC_HD void orthogonal(int d, const T* theta, double* O) {
    double B[kMaxCayleyDim * kMaxCayleyDim];  // −A
    int64_t k = 0;
    for (int a = 0; a < d; ++a) {
      B[a * d + a] = 0;
      for (int b = a + 1; b < d; ++b, ++k) B[a * d + b] = -double(theta[k]), B[b * d + a] = double(theta[k]);
    }
    cayley(d, B, O);
  }

  template <typename T>
  static MHC_HD void res_forward(const CoeffVariant<T>& v, const T* res_logits, T* res) {
    const int n = v.n, s = v.options.block_size, d = n * s;
    double O[kMaxCayleyDim * kMaxCayleyDim];
    orthogonal(d, res_logits, O);
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < n; ++j) {
        double h = 0;
        for (int k = 0; k < s; ++k)
          for (int l = 0; l < s; ++l) h += O[(i * s + k) * d + j * s + l] * O[(i * s + k) * d + j * s + l];
        res[i * n + j] = T(h / s);
      }
  }

  // dO[a, b] = (2/s)·O[a, b]·dH_res[a/s, b/s], then the Cayley backward; dA = −dB, and θ_ab enters
  // A at (a, b) and, negated, at (b, a).
  template <typename T>
  static MHC_HD void res_backward(const CoeffVariant<T>& v, const T* res_logits, const T* dres, T*, T* dres_logits) {
    const int n = v.n, s = v.options.block_size, d = n * s;
    double O[kMaxCayleyDim * kMaxCayleyDim], dO[kMaxCayleyDim * kMaxCayleyDim], dB[kMaxCayleyDim * kMaxCayleyDim];
    orthogonal(d, res_logits, O);
    for (int a = 0; a < d; ++a) {  // row a of O lies in block row a/s: dres's row, without a division per entry
      const T* dres_row = dres + (a / s) * n;
      for (int j = 0; j < n; ++j)
        for (int l = 0; l < s; ++l) dO[a * d + j * s + l] = 2.0 / s * O[a * d + j * s + l] * double(dres_row[j]);
    }
    cayley_backward(d, O, dO, dB);
    int64_t k = 0;
    for (int a = 0; a < d; ++a)
      for (int b = a + 1; b < d; ++b, ++k) dres_logits[k] = T(dB[b * d + a] - dB[a * d + b]);
  }
};

template <>
struct VariantMath<Variant::gomhc> : SigmaFamily<OrthostochasticMixing> {
  // d = n·s ≤ kMaxCayleyDim: the Cayley solve's size, and phi's d(d−1)/2 res columns (s itself is
  // checked with the other options, check_variant_options).
  static void check_streams(int64_t n, const VariantOptions& options) {
    const int s = options.block_size;
    check_stream_range("gomhc", n, kMaxCayleyDim / s,
                       " at block_size " + std::to_string(s) + " (d = n·block_size ≤ " +
                           std::to_string(kMaxCayleyDim) + ")");
  }
  static constexpr ShapeNames shape_names = {"[n*C, 2n + d(d-1)/2] for gomhc (d = n*block_size)", "[2n + d(d-1)/2]",
                                             "[3] (pre, post, res)"};
};

}  // namespace mhc::kernels
