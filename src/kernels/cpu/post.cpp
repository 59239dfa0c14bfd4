// Fused CPU kernels for `post`: x_next = H_res·x + H_post^T·y (DESIGN.md §1, §3 step 1).
//
// Per token the n input streams and y (n+1 rows of C) are read once from memory and the n output
// streams written once: (2n+1)·C values moved, where the unfused form moves (3n+1)·C or more.
// The loops run along C one vector at a time with the stream count n a compile-time constant, so
// every stream's vector and every dot-product accumulator lives in a register: the backward's
// n + n² reductions proceed as independent chains instead of one latency-bound chain each.
// Parallel over tokens.
#include <omp.h>

#include "cpu_kernels.h"
#include "simd.h"

namespace mhc::cpu {
namespace {

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

// One pass over dout for one input row v (y, or a stream x_j): mixed = Σ_k w[k·ws]·dout_k and
// dots[k·ds] = ⟨dout_k, v⟩. The backward of post is this pass once for y (w = H_post) and once
// per stream j (w = column j of H_res).
template <typename T, int N>
void mix_and_dot(const T* dout, const T* v, const T* w, int ws, T* mixed, T* dots, int ds, int64_t C) {
  using S = Simd<T>;
  using V = typename S::V;
  const int64_t vec_end = C / S::W * S::W;
  V acc[N];
  for (int k = 0; k < N; ++k) acc[k] = V{};
  for (int64_t c = 0; c < vec_end; c += S::W) {
    const V vv = S::load(v + c);
    V mv = V{};
    for (int k = 0; k < N; ++k) {
      const V dk = S::load(dout + k * C + c);
      mv += S::splat(w[k * ws]) * dk;
      acc[k] += dk * vv;
    }
    S::store(mixed + c, mv);
  }
  for (int k = 0; k < N; ++k) dots[k * ds] = horizontal_sum<T>(acc[k]);
  for (int64_t c = vec_end; c < C; ++c) {  // C not a multiple of the vector width
    T m = 0;
    for (int k = 0; k < N; ++k) {
      m += w[k * ws] * dout[k * C + c];
      dots[k * ds] += dout[k * C + c] * v[c];
    }
    mixed[c] = m;
  }
}

template <typename T, int N>
void post_backward_token(T* dx, T* dy, T* dHp, T* dHr, const T* dout, const T* x, const T* y, const T* hp,
                         const T* hr, int64_t C) {
  mix_and_dot<T, N>(dout, y, hp, 1, dy, dHp, 1, C);  // dy, dH_post
  for (int j = 0; j < N; ++j)                        // dx_j, dH_res[:, j]
    mix_and_dot<T, N>(dout, x + j * C, hr + j, N, dx + j * C, dHr + j, N, C);
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
