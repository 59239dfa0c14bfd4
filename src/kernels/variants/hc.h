// HC's coefficients (Zhu et al.; DESIGN.md §2): per stream i, its own projection g_i [m] of the
// RMS-normalised stream, tanh gates scaled by s_α (pre and res) and s_β (post) over static biases:
//   H_pre_i = b_pre_i + s_α·tanh(g_i0/r_i), H_post_i = b_post_i + s_β·tanh(g_i1/r_i),
//   H_res[k][i] = b_res[k][i] + s_α·tanh(g_i,2+k/r_i)   (unconstrained).
#pragma once

#include "common.h"

namespace mhc::kernels {

template <>
struct VariantMath<Variant::hc> {
  static void check_streams(int64_t n, const VariantOptions&) { check_stream_range("hc", n, kMaxStreams); }
  // One projection per stream: x̄_i·[w_pre | w_post | W_res]; alpha = [s_alpha, s_beta].
  static Layout layout(int64_t n, int64_t C, const VariantOptions&) { return {C, n + 2, 2 * n + n * n, 2, n, n * n}; }
  static constexpr ShapeNames shape_names = {"[C, n + 2] for hc", "[2n + n*n]", "[2] (s_alpha, s_beta)"};
  // Step 0 is exactly a pre-norm residual network: H_pre = e_lead, H_res = I, H_post = 1 (the
  // logit magnitudes do not apply: HC has no σ).
  static void initial_bias_and_alpha(int64_t n, int64_t lead, double, double, float* bias, float* alpha,
                                     const VariantOptions&) {
    for (int64_t i = 0; i < n; ++i) bias[i] = i == lead ? 1.f : 0.f, bias[n + i] = 1.f;
    for (int64_t k = 0; k < n; ++k)
      for (int64_t i = 0; i < n; ++i) bias[2 * n + k * n + i] = k == i ? 1.f : 0.f;
    alpha[0] = alpha[1] = 0.01f;
  }

  template <typename T>
  static MHC_HD int64_t scratch_size(const CoeffVariant<T>&) {
    return 0;
  }

  template <typename T>
  static MHC_HD void forward(const CoeffVariant<T>& v, const T* g, const T* r, T*, Coeffs<T>& out) {
    const int n = v.n;
    const T s_alpha = v.alpha[0], s_beta = v.alpha[1];
    for (int i = 0; i < n; ++i) {
      const T* gi = g + i * v.m;
      const T inv_r = T(1) / r[i];
      out.pre[i] = v.bias[i] + s_alpha * std::tanh(gi[0] * inv_r);
      out.post[i] = v.bias[n + i] + s_beta * std::tanh(gi[1] * inv_r);
      for (int k = 0; k < n; ++k)
        out.res[k * n + i] = v.bias[2 * n + k * n + i] + s_alpha * std::tanh(gi[2 + k] * inv_r);
    }
  }

  template <typename T>
  static MHC_HD void backward(const CoeffVariant<T>& v, const T* g, const T* r, const T* dpre, const T* dpost,
                              const T* dres, T*, T* dg, T* dr, T* dbias, T* dalpha, T* H_pre) {
    const int n = v.n;
    const T s_alpha = v.alpha[0], s_beta = v.alpha[1];
    for (int i = 0; i < n; ++i) {
      const T* gi = g + i * v.m;
      T* dgi = dg + i * v.m;
      const T inv_r = T(1) / r[i];
      T dri = 0;
      // column j of this stream's projection, its tanh, and the coefficient gradient behind it
      auto gate = [&](int64_t j, T scale, T dcoef, T& dscale) {
        const T u = std::tanh(gi[j] * inv_r);
        dscale += dcoef * u;
        const T dz = scale * dcoef * (T(1) - u * u);
        dgi[j] = dz * inv_r;
        dri -= dz * gi[j] * inv_r * inv_r;
        return u;
      };
      H_pre[i] = v.bias[i] + s_alpha * gate(0, s_alpha, dpre[i], dalpha[0]);
      gate(1, s_beta, dpost[i], dalpha[1]);
      for (int k = 0; k < n; ++k) gate(2 + k, s_alpha, dres[k * n + i], dalpha[0]);
      dr[i] = dri;
      dbias[i] += dpre[i];
      dbias[n + i] += dpost[i];
      for (int k = 0; k < n; ++k) dbias[2 * n + k * n + i] += dres[k * n + i];
    }
  }
};

}  // namespace mhc::kernels
