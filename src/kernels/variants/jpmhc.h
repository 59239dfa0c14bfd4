// JPmHC's coefficients (arXiv 2602.18308; DESIGN.md §11): an orthogonal H_res, so every singular
// value of the stream mixing stays 1. Per token, from a LayerNorm read (the kernels centre the
// projection: g = (v − mean)·phi and r is the standard deviation, Layout::centred):
//   H̃_g = α_g·g/r + b, three n×n blocks [pre | post | res], row-major;
//   H_pre[j]  = (1/n)·Σ_i softmax_row(H̃_pre)[i, j]      (sums to 1)
//   H_post[i] = Σ_j softmax_column(H̃_post)[i, j]        (sums to n)
//   H_res     = Cayley(B), B = (β/2)·(H̃_res − H̃_resᵀ)  (cayley.h; exact, or the paper's s steps)
// β is VariantOptions::cayley_scale, s its cayley_iters (0: exact).
#pragma once

#include "cayley.h"
#include "common.h"

namespace mhc::kernels {

template <>
struct VariantMath<Variant::jpmhc> {
  static void check_streams(int64_t n, const VariantOptions&) { check_stream_range("jpmhc", n, kMaxCayleyDim); }
  static Layout layout(int64_t n, int64_t C, const VariantOptions&) {
    return {n * C, 3 * n * n, 3 * n * n, 3, 1, n * n, /*centred=*/true};
  }
  static constexpr ShapeNames shape_names = {"[n*C, 3n*n] for jpmhc", "[3n*n]", "[3] (pre, post, res)"};

  // φ = 0 and b_res = 0 (H_res = I); the pre logits ±stream_logit favour column `lead` of every
  // row, the post logits row `lead` of every column: without that asymmetry the streams, which
  // start as copies, get the same update and stay copies. α = 1: the paper's function.
  static void initial_bias_and_alpha(int64_t n, int64_t lead, double stream_logit, double, float* bias, float* alpha,
                                     const VariantOptions&) {
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) {
        bias[i * n + j] = float(j == lead ? stream_logit : -stream_logit);
        bias[n * n + i * n + j] = float(i == lead ? stream_logit : -stream_logit);
        bias[2 * n * n + i * n + j] = 0.f;
      }
    alpha[0] = alpha[1] = alpha[2] = 1.f;
  }

  struct Groups {
    int64_t block;  // n²
    MHC_HD int operator()(int64_t j) const { return static_cast<int>(j / block); }
  };

  // The logits and their gradient (forward uses the first half).
  template <typename T>
  static MHC_HD int64_t scratch_size(const CoeffVariant<T>& v) {
    return 2 * v.m;
  }

  // B = (β/2)·(Z − Zᵀ) of the res logits Z, in double.
  template <typename T>
  static MHC_HD void skew(const CoeffVariant<T>& v, const T* Z, double* B) {
    const int n = v.n;
    const double half_beta = 0.5 * v.options.cayley_scale;
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < n; ++j) B[i * n + j] = half_beta * (double(Z[i * n + j]) - double(Z[j * n + i]));
  }

  // H_res from B: the exact Cayley map, or the paper's steps (their iterates kept for the backward).
  template <typename T>
  static MHC_HD void mixing(const CoeffVariant<T>& v, const double* B, double* iterates, double* H) {
    if (v.options.cayley_iters == 0) cayley(v.n, B, H);
    else cayley_iterative(v.n, v.options.cayley_iters, B, iterates, H);
  }

  // H_pre[j] = (1/n)·Σ_i P[i, j].
  template <typename T>
  static MHC_HD void read_weights(int n, const T* P, T* H_pre) {
    for (int j = 0; j < n; ++j) {
      T pre = 0;
      for (int i = 0; i < n; ++i) pre += P[i * n + j];
      H_pre[j] = pre / T(n);
    }
  }

  // The row softmaxes of the pre block into P and the column softmaxes of the post block into Q.
  template <typename T>
  static MHC_HD void read_write_weights(int n, const T* logits, T* P, T* Q) {
    for (int i = 0; i < n; ++i) softmax(logits + i * n, n, P + i * n);
    const T* post = logits + n * n;
    for (int j = 0; j < n; ++j) {
      T column[kMaxCayleyDim], weights[kMaxCayleyDim];
      for (int i = 0; i < n; ++i) column[i] = post[i * n + j];
      softmax(column, n, weights);
      for (int i = 0; i < n; ++i) Q[i * n + j] = weights[i];
    }
  }

  template <typename T>
  static MHC_HD void forward(const CoeffVariant<T>& v, const T* g, const T* r, T* scratch, Coeffs<T>& out) {
    const int n = v.n;
    T* logits = scratch;
    projected_logits(v, g, r[0], Groups{int64_t(n) * n}, logits);
    T P[kMaxCayleyDim * kMaxCayleyDim], Q[kMaxCayleyDim * kMaxCayleyDim];
    read_write_weights(n, logits, P, Q);
    read_weights(n, P, out.pre);
    for (int i = 0; i < n; ++i) {
      T post = 0;
      for (int j = 0; j < n; ++j) post += Q[i * n + j];
      out.post[i] = post;
    }
    double B[kMaxCayleyDim * kMaxCayleyDim], H[kMaxCayleyDim * kMaxCayleyDim];
    double iterates[kMaxCayleyIters * kMaxCayleyDim * kMaxCayleyDim];
    skew(v, logits + 2 * n * n, B);
    mixing(v, B, iterates, H);
    for (int e = 0; e < n * n; ++e) out.res[e] = T(H[e]);
  }

  template <typename T>
  static MHC_HD void backward(const CoeffVariant<T>& v, const T* g, const T* r, const T* dpre, const T* dpost,
                              const T* dres, T* scratch, T* dg, T* dr, T* dbias, T* dalpha, T* H_pre) {
    const int n = v.n;
    const Groups groups{int64_t(n) * n};
    T* logits = scratch;
    T* dlogits = scratch + v.m;
    projected_logits(v, g, r[0], groups, logits);
    T P[kMaxCayleyDim * kMaxCayleyDim], Q[kMaxCayleyDim * kMaxCayleyDim];
    read_write_weights(n, logits, P, Q);
    // Row softmax i of the pre block, dP[i, j] = dH_pre[j]/n; column softmax j of the post block,
    // dQ[i, j] = dH_post[i].
    for (int i = 0; i < n; ++i) {
      T dot = 0;
      for (int j = 0; j < n; ++j) dot += P[i * n + j] * dpre[j];
      for (int j = 0; j < n; ++j) dlogits[i * n + j] = P[i * n + j] * (dpre[j] - dot) / T(n);
    }
    for (int j = 0; j < n; ++j) {
      T dot = 0;
      for (int i = 0; i < n; ++i) dot += Q[i * n + j] * dpost[i];
      for (int i = 0; i < n; ++i) dlogits[n * n + i * n + j] = Q[i * n + j] * (dpost[i] - dot);
    }
    read_weights(n, P, H_pre);
    res_backward(v, logits + 2 * n * n, dres, dlogits + 2 * n * n);
    projected_logits_backward(v, g, r, groups, dlogits, dg, dr, dbias, dalpha);
  }

  // dB through the Cayley map (exact or iterative), then dZ = (β/2)·(dB − dBᵀ).
  template <typename T>
  static MHC_HD void res_backward(const CoeffVariant<T>& v, const T* Z, const T* dres, T* dZ) {
    const int n = v.n;
    double B[kMaxCayleyDim * kMaxCayleyDim], H[kMaxCayleyDim * kMaxCayleyDim];
    double dH[kMaxCayleyDim * kMaxCayleyDim], dB[kMaxCayleyDim * kMaxCayleyDim];
    double iterates[kMaxCayleyIters * kMaxCayleyDim * kMaxCayleyDim];
    skew(v, Z, B);
    for (int e = 0; e < n * n; ++e) dH[e] = double(dres[e]);
    mixing(v, B, iterates, H);
    if (v.options.cayley_iters == 0) cayley_backward(n, H, dH, dB);
    else cayley_iterative_backward(n, v.options.cayley_iters, B, iterates, dH, dB);
    const double half_beta = 0.5 * v.options.cayley_scale;
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < n; ++j) dZ[i * n + j] = T(half_beta * (dB[i * n + j] - dB[j * n + i]));
  }
};

}  // namespace mhc::kernels
