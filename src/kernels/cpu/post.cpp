// Fused CPU kernels for `post`: x_next = H_res·x + H_post^T·y (DESIGN.md §1, §3 step 1).
//
// Per token the n input streams and y (n+1 rows of C) are read once from memory and stay in L1
// while the n output streams are written, so the pass moves (2n+1)·C values where the unfused
// form moves (3n+1)·C or more. Parallel over tokens; the inner loops run along C and vectorise.
#include <omp.h>

#include "kernels.h"

namespace mhc::cpu {

template <typename T>
void post_forward(T* out, const T* x, const T* y, const T* H_post, const T* H_res, int64_t N, int n,
                  int64_t C, int threads) {
#pragma omp parallel for num_threads(threads > 0 ? threads : omp_get_max_threads()) schedule(static)
  for (int64_t tok = 0; tok < N; ++tok) {
    const T* xt = x + tok * n * C;
    const T* yt = y + tok * C;
    const T* hr = H_res + tok * n * n;
    for (int k = 0; k < n; ++k) {
      T* o = out + (tok * n + k) * C;
      const T wy = H_post[tok * n + k];
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) o[c] = wy * yt[c];
      for (int j = 0; j < n; ++j) {
        const T w = hr[k * n + j];
        const T* xj = xt + j * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) o[c] += w * xj[c];
      }
    }
  }
}

template <typename T>
void post_backward(T* dx, T* dy, T* dH_post, T* dH_res, const T* dout, const T* x, const T* y,
                   const T* H_post, const T* H_res, int64_t N, int n, int64_t C, int threads) {
#pragma omp parallel for num_threads(threads > 0 ? threads : omp_get_max_threads()) schedule(static)
  for (int64_t tok = 0; tok < N; ++tok) {
    const T* xt = x + tok * n * C;
    const T* yt = y + tok * C;
    const T* dot = dout + tok * n * C;
    const T* hr = H_res + tok * n * n;
    const T* hp = H_post + tok * n;
    T* dxt = dx + tok * n * C;
    T* dyt = dy + tok * C;
    // dy = Σ_k H_post[k]·dout_k, dH_post[k] = ⟨dout_k, y⟩
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) dyt[c] = T(0);
    for (int k = 0; k < n; ++k) {
      const T* dk = dot + k * C;
      const T w = hp[k];
      T acc = 0;
#pragma omp simd reduction(+ : acc)
      for (int64_t c = 0; c < C; ++c) {
        dyt[c] += w * dk[c];
        acc += dk[c] * yt[c];
      }
      dH_post[tok * n + k] = acc;
    }
    // dx_j = Σ_k H_res[k,j]·dout_k, dH_res[k,j] = ⟨dout_k, x_j⟩
    for (int j = 0; j < n; ++j) {
      const T* xj = xt + j * C;
      T* dxj = dxt + j * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) dxj[c] = T(0);
      for (int k = 0; k < n; ++k) {
        const T* dk = dot + k * C;
        const T w = hr[k * n + j];
        T acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t c = 0; c < C; ++c) {
          dxj[c] += w * dk[c];
          acc += dk[c] * xj[c];
        }
        dH_res[tok * n * n + k * n + j] = acc;
      }
    }
  }
}

template void post_forward<float>(float*, const float*, const float*, const float*, const float*, int64_t, int,
                                  int64_t, int);
template void post_forward<double>(double*, const double*, const double*, const double*, const double*, int64_t,
                                   int, int64_t, int);
template void post_backward<float>(float*, float*, float*, float*, const float*, const float*, const float*,
                                   const float*, const float*, int64_t, int, int64_t, int);
template void post_backward<double>(double*, double*, double*, double*, const double*, const double*,
                                    const double*, const double*, const double*, int64_t, int, int64_t, int);

}  // namespace mhc::cpu
