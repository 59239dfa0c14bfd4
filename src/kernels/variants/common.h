// What every variant's per-token coefficient math shares (DESIGN.md §2–3): the per-call view of
// the parameters, one token's coefficients, and the σ family — mHC, mHC-lite, KromHC, identity-HC
// (every variant whose H_pre and H_post are σ and 2σ of α·g/r + b, differing only in H_res),
// written once with the H_res map as a parameter. A few dozen numbers per token, so plain scalar
// code, compiled for the CPU kernels and, under nvcc, for the CUDA kernels (MHC_HD, ../streams.h,
// with the compile-time stream count): both backends compute the same function. Each variant's
// header (residual.h, hc.h, mhc.h, mhc_v4.h, mhc_lite.h, kromhc.h, ihc.h, jpmhc.h, gomhc.h)
// specialises VariantMath; ../coefficients.h turns the runtime variant into it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "../streams.h"
#include "mhc/variant.h"

namespace mhc::kernels {

// What the coefficient math of one call needs (a view: the permutation table lives elsewhere).
template <typename T>
struct CoeffVariant {
  Variant variant;
  int n;
  int64_t m, P;        // columns of phi; projections per token
  int64_t res_count;   // logits behind H_res: n² (mHC, HC), n! (mHC-lite), Σ f_k! (KromHC), 0 (identity-HC)
  int t;
  const T* bias;
  const T* alpha;
  const int* perms;    // mHC-lite: perms[k·n + i] = σ_k(i), lexicographic, k = 0 is identity
  VariantOptions options;  // jpmhc's Cayley steps and scale, gomhc's block size
};

// One token's coefficients.
template <typename T>
struct Coeffs {
  T pre[kMaxStreams];
  T post[kMaxStreams];
  T res[kMaxStreams * kMaxStreams];
};

template <typename T>
MHC_HD inline T sigmoid(T z) {
  return T(1) / (T(1) + std::exp(-z));
}

template <typename T>
MHC_HD inline void softmax(const T* z, int64_t count, T* out) {
  T zmax = z[0];
  for (int64_t k = 1; k < count; ++k) zmax = std::max(zmax, z[k]);
  T s = 0;
  for (int64_t k = 0; k < count; ++k) s += (out[k] = std::exp(z[k] - zmax));
  const T inv = T(1) / s;
  for (int64_t k = 0; k < count; ++k) out[k] *= inv;
}

// One variant's per-token coefficient math: forward (g [P, m], r [P] -> Coeffs) and backward
// (dH_pre, dH_post, dH_res -> dg, dr; accumulates dbias, dalpha; returns H_pre for dx).
//   template <typename T> static MHC_HD void forward(const CoeffVariant<T>&, const T* g, const T* r,
//                                                    T* scratch, Coeffs<T>& out);
//   template <typename T> static MHC_HD void backward(const CoeffVariant<T>&, const T* g, const T* r,
//       const T* dpre, const T* dpost, const T* dres, T* scratch, T* dg, T* dr, T* dbias, T* dalpha, T* H_pre);
//   template <typename T> static MHC_HD int64_t scratch_size(const CoeffVariant<T>&);   entries of T
// and, host only, the facts include/mhc/variant.h reports:
//   static void check_streams(int64_t n, const VariantOptions&);   throws std::invalid_argument naming what is accepted
//   static Layout layout(int64_t n, int64_t C, const VariantOptions&);
//   static constexpr ShapeNames shape_names;
//   static void initial_bias_and_alpha(int64_t n, int64_t lead, double stream_logit, double res_off_logit,
//                                      float* bias, float* alpha, const VariantOptions&);
template <Variant K>
struct VariantMath;

// n in [1, most] streams, or a one-line error naming the variant, the range (and why), n, and advice.
inline void check_stream_range(const char* variant, int64_t n, int64_t most, const std::string& why = "",
                               const std::string& advice = "") {
  if (n < 1 || n > most)
    throw std::invalid_argument(std::string(variant) + " takes 1 to " + std::to_string(most) + " streams" + why +
                                ", got n = " + std::to_string(n) + advice);
}

// ---------------------------------------------------------------------------------------------
// The σ family: H̃ = α_group·g/r + b over one projection per token (P = 1), H_pre = σ(H̃_pre) (+ eps in V4),
// H_post = 2σ(H̃_post), and H_res = Mixing::res_forward(H̃_res). Mixing supplies
//   res_size(n, options)                                     its logits (phi's res columns)
//   initial_res_logits(n, res_off_logit, logits, options)    their initial biases (H_res ≈ I)
//   res_forward(v, res_logits, res)                          H_res [n·n] from its logits
//   res_backward(v, res_logits, dres, work, dres_logits)     their gradient
//   work_size(v)                                             the scratch res_backward works in

// The logits of one projection, H̃_j = α_group(j)·g_j/r + b_j, with phi's columns in groups
// [pre | post | res] (group_of(j) in {0, 1, 2}).
template <typename T, typename GroupOf>
MHC_HD inline void projected_logits(const CoeffVariant<T>& v, const T* g, T r, GroupOf group_of, T* logits) {
  for (int64_t j = 0; j < v.m; ++j)
    logits[j] = v.alpha[group_of(j)] * (g[j] / r) + v.bias[j];  // the reference's rounding order
}

// Through H̃ = α·g/r + b: dg [m] and dr, accumulating dbias and dalpha.
template <typename T, typename GroupOf>
MHC_HD inline void projected_logits_backward(const CoeffVariant<T>& v, const T* g, const T* r, GroupOf group_of,
                                             const T* dlogits, T* dg, T* dr, T* dbias, T* dalpha) {
  const T inv_r = T(1) / r[0];
  T dr0 = 0;
  for (int64_t j = 0; j < v.m; ++j) {
    const int group = group_of(j);
    const T a = v.alpha[group];
    dg[j] = a * dlogits[j] * inv_r;
    dalpha[group] += dlogits[j] * (g[j] / r[0]);
    dbias[j] += dlogits[j];
    dr0 -= a * g[j] * dlogits[j] * inv_r * inv_r;
  }
  dr[0] = dr0;
}

// The σ family's groups: n pre columns, n post, then the res logits.
struct SigmaGroups {
  int n;
  MHC_HD int operator()(int64_t j) const { return j < n ? 0 : j < 2 * n ? 1 : 2; }
};

// mHC / mHC-lite logits H̃ = α_group·g/r + b.
template <typename T>
MHC_HD inline void mhc_logits(const CoeffVariant<T>& v, const T* g, T r, T* logits) {
  projected_logits(v, g, r, SigmaGroups{v.n}, logits);
}

// A compile-time eps: DeepSeek-V4's floors (mhc_v4.h) are Eps::value; every other variant has none.
struct NoEps {
  static constexpr double value = 0.0;
};

// PreEps::value is added to H_pre (DeepSeek-V4's σ + eps).
template <typename Mixing, typename PreEps = NoEps>
struct SigmaFamily {
  // One projection of the flattened state per token: vec(x)·[w_pre | w_post | w_res].
  // alpha = [α_pre, α_post, α_res], without α_res when H_res has no logits.
  static Layout layout(int64_t n, int64_t C, const VariantOptions& options) {
    const int64_t res = Mixing::res_size(n, options);
    return {n * C, 2 * n + res, 2 * n + res, res > 0 ? 3 : 2, 1, res};
  }

  // σ(±stream_logit) favours the sublayer's leading stream in H_pre and H_post, H_res starts near
  // the identity (Mixing's res logits), and every gain α is 0.01: a near-residual network at step 0.
  static void initial_bias_and_alpha(int64_t n, int64_t lead, double stream_logit, double res_off_logit, float* bias,
                                     float* alpha, const VariantOptions& options) {
    for (int64_t group = 0; group < 2; ++group)
      for (int64_t i = 0; i < n; ++i) bias[group * n + i] = float(i == lead ? stream_logit : -stream_logit);
    Mixing::initial_res_logits(n, res_off_logit, bias + 2 * n, options);
    for (int64_t a = 0; a < layout(n, 1, options).alpha_size; ++a) alpha[a] = 0.01f;
  }

  // The logits and their gradient (2m), then what Mixing::res_backward works in.
  template <typename T>
  static MHC_HD int64_t scratch_size(const CoeffVariant<T>& v) {
    return 2 * v.m + Mixing::work_size(v);
  }

  // forward is gates (the logits [m], H_pre, H_post) then Mixing::res_forward on the res logits, and
  // backward is backward_gates, Mixing::res_backward, backward_logits: the CPU kernels call the parts
  // apart to run H_res of several tokens at once (../cpu/sinkhorn_lanes.h).
  using MixingType = Mixing;

  template <typename T>
  static MHC_HD void gates(const CoeffVariant<T>& v, const T* g, const T* r, T* logits, Coeffs<T>& out) {
    const int n = v.n;
    mhc_logits(v, g, r[0], logits);
    for (int i = 0; i < n; ++i) {
      out.pre[i] = sigmoid(logits[i]) + T(PreEps::value);
      out.post[i] = T(2) * sigmoid(logits[n + i]);
    }
  }

  // scratch: the logits (m entries; mHC's SK then runs in place in out.res).
  template <typename T>
  static MHC_HD void forward(const CoeffVariant<T>& v, const T* g, const T* r, T* scratch, Coeffs<T>& out) {
    gates(v, g, r, scratch, out);
    Mixing::res_forward(v, scratch + 2 * v.n, out.res);
  }

  // The logits [m], H_pre, and the pre and post part of dlogits [m].
  template <typename T>
  static MHC_HD void backward_gates(const CoeffVariant<T>& v, const T* g, const T* r, const T* dpre, const T* dpost,
                                    T* logits, T* dlogits, T* H_pre) {
    const int n = v.n;
    mhc_logits(v, g, r[0], logits);
    for (int i = 0; i < n; ++i) {
      const T s_pre = sigmoid(logits[i]), s_post = sigmoid(logits[n + i]);
      H_pre[i] = s_pre + T(PreEps::value);
      dlogits[i] = dpre[i] * s_pre * (T(1) - s_pre);
      dlogits[n + i] = dpost[i] * T(2) * s_post * (T(1) - s_post);
    }
  }

  // scratch: scratch_size(v) entries.
  template <typename T>
  static MHC_HD void backward(const CoeffVariant<T>& v, const T* g, const T* r, const T* dpre, const T* dpost,
                              const T* dres, T* scratch, T* dg, T* dr, T* dbias, T* dalpha, T* H_pre) {
    T* logits = scratch;
    T* dlogits = scratch + v.m;  // m entries
    T* work = dlogits + v.m;
    backward_gates(v, g, r, dpre, dpost, logits, dlogits, H_pre);
    Mixing::res_backward(v, logits + 2 * v.n, dres, work, dlogits + 2 * v.n);
    backward_logits(v, g, r, dlogits, dg, dr, dbias, dalpha);
  }

  // Through H̃ = α·g/r + b: dg [m] and dr, accumulating dbias and dalpha.
  template <typename T>
  static MHC_HD void backward_logits(const CoeffVariant<T>& v, const T* g, const T* r, const T* dlogits, T* dg, T* dr,
                                     T* dbias, T* dalpha) {
    projected_logits_backward(v, g, r, SigmaGroups{v.n}, dlogits, dg, dr, dbias, dalpha);
  }
};

}  // namespace mhc::kernels
