// Fused CPU kernels for `post`: x_next = H_res·x + H_post^T·y (DESIGN.md §1, §3 step 1).
//
// Per token the n input streams and y (n+1 rows of C) are read once from memory and the n output
// streams written once: (2n+1)·C values moved, where the unfused form moves (3n+1)·C or more.
// The loops run along C one vector at a time with the stream count n a compile-time constant, so
// every stream's vector and every dot-product accumulator lives in a register: the backward's
// n + n² reductions proceed as independent chains instead of one latency-bound chain each.
// Parallel over tokens.
#include <omp.h>

#include "kernels.h"
#include "common.h"

namespace mhc::cpu {
namespace {

template <typename T>
T horizontal_sum(typename Simd<T>::V v) {
  T s = 0;
  for (int l = 0; l < Simd<T>::W; ++l) s += v[l];
  return s;
}

template <typename T, int N>
void post_forward_token(T* out, const T* x, const T* y, const T* hp, const T* hr, int64_t C) {
  using S = Simd<T>;
  using V = typename S::V;
  int64_t c = 0;
  for (; c + S::W <= C; c += S::W) {
    V xv[N];
    for (int j = 0; j < N; ++j) xv[j] = S::load(x + j * C + c);
    const V yv = S::load(y + c);
    for (int k = 0; k < N; ++k) {
      V o = S::splat(hp[k]) * yv;
      for (int j = 0; j < N; ++j) o += S::splat(hr[k * N + j]) * xv[j];
      S::store(out + k * C + c, o);
    }
  }
  for (; c < C; ++c)  // C not a multiple of the vector width
    for (int k = 0; k < N; ++k) {
      T o = hp[k] * y[c];
      for (int j = 0; j < N; ++j) o += hr[k * N + j] * x[j * C + c];
      out[k * C + c] = o;
    }
}

template <typename T, int N>
void post_backward_token(T* dx, T* dy, T* dHp, T* dHr, const T* dout, const T* x, const T* y, const T* hp,
                         const T* hr, int64_t C) {
  using S = Simd<T>;
  using V = typename S::V;
  const int64_t vec_end = C / S::W * S::W;
  // dy = Σ_k H_post[k]·dout_k and dH_post[k] = ⟨dout_k, y⟩ in one pass.
  V acc[N];
  for (int k = 0; k < N; ++k) acc[k] = V{};
  for (int64_t c = 0; c < vec_end; c += S::W) {
    const V yv = S::load(y + c);
    V dyv = V{};
    for (int k = 0; k < N; ++k) {
      const V dk = S::load(dout + k * C + c);
      dyv += S::splat(hp[k]) * dk;
      acc[k] += dk * yv;
    }
    S::store(dy + c, dyv);
  }
  for (int k = 0; k < N; ++k) dHp[k] = horizontal_sum<T>(acc[k]);
  for (int64_t c = vec_end; c < C; ++c) {
    T d = 0;
    for (int k = 0; k < N; ++k) {
      d += hp[k] * dout[k * C + c];
      dHp[k] += dout[k * C + c] * y[c];
    }
    dy[c] = d;
  }
  // Per source stream j: dx_j = Σ_k H_res[k,j]·dout_k and dH_res[k,j] = ⟨dout_k, x_j⟩ in one pass.
  for (int j = 0; j < N; ++j) {
    const T* xj = x + j * C;
    T* dxj = dx + j * C;
    for (int k = 0; k < N; ++k) acc[k] = V{};
    for (int64_t c = 0; c < vec_end; c += S::W) {
      const V xv = S::load(xj + c);
      V dxv = V{};
      for (int k = 0; k < N; ++k) {
        const V dk = S::load(dout + k * C + c);
        dxv += S::splat(hr[k * N + j]) * dk;
        acc[k] += dk * xv;
      }
      S::store(dxj + c, dxv);
    }
    for (int k = 0; k < N; ++k) dHr[k * N + j] = horizontal_sum<T>(acc[k]);
    for (int64_t c = vec_end; c < C; ++c) {
      T d = 0;
      for (int k = 0; k < N; ++k) {
        d += hr[k * N + j] * dout[k * C + c];
        dHr[k * N + j] += dout[k * C + c] * xj[c];
      }
      dxj[c] = d;
    }
  }
}

}  // namespace

template <typename T>
void post_forward(T* out, const T* x, const T* y, const T* H_post, const T* H_res, int64_t N, int n, int64_t C,
                  int threads) {
  with_streams(n, [&](auto S) {
    constexpr int ns = S();
#pragma omp parallel for num_threads(thread_count(threads)) schedule(static)
    for (int64_t tok = 0; tok < N; ++tok)
      post_forward_token<T, ns>(out + tok * ns * C, x + tok * ns * C, y + tok * C, H_post + tok * ns,
                                H_res + tok * ns * ns, C);
  });
}

template <typename T>
void post_backward(T* dx, T* dy, T* dH_post, T* dH_res, const T* dout, const T* x, const T* y, const T* H_post,
                   const T* H_res, int64_t N, int n, int64_t C, int threads) {
  with_streams(n, [&](auto S) {
    constexpr int ns = S();
#pragma omp parallel for num_threads(thread_count(threads)) schedule(static)
    for (int64_t tok = 0; tok < N; ++tok)
      post_backward_token<T, ns>(dx + tok * ns * C, dy + tok * C, dH_post + tok * ns, dH_res + tok * ns * ns,
                                 dout + tok * ns * C, x + tok * ns * C, y + tok * C, H_post + tok * ns,
                                 H_res + tok * ns * ns, C);
  });
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
