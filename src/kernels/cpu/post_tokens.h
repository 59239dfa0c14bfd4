// The per-token arithmetic of `post`, forward and backward, for the post kernels (post.cpp) and
// the boundary kernels that run a post and the next pre over one tile (pre.cpp).
//
// Per token the n input streams and y (n+1 rows of C) are read once and the n output streams
// written once. The loops run along C one vector at a time with the stream count n a compile-time
// constant, so every stream's vector and every dot-product accumulator lives in a register: the
// backward's n + n² reductions proceed as independent chains instead of one latency-bound chain each.
// kNonTemporal: the outputs are written with non-temporal stores (simd.h, bypasses_cache).
#pragma once

#include <cstdint>

#include "cpu_kernels.h"
#include "simd.h"

namespace mhc::cpu {
namespace post_detail {

template <typename T, int N, bool kNonTemporal>
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
      put<kNonTemporal>(out + k * C + c, o);
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
template <typename T, int N, bool kNonTemporal>
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
    put<kNonTemporal>(mixed + c, mv);
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

template <typename T, int N, bool kNonTemporal>
void post_backward_token(T* dx, T* dy, T* dHp, T* dHr, const T* dout, const T* x, const T* y, const T* hp,
                         const T* hr, int64_t C) {
  mix_and_dot<T, N, kNonTemporal>(dout, y, hp, 1, dy, dHp, 1, C);  // dy, dH_post
  for (int j = 0; j < N; ++j)                                       // dx_j, dH_res[:, j]
    mix_and_dot<T, N, kNonTemporal>(dout, x + j * C, hr + j, N, dx + j * C, dHr + j, N, C);
}

}  // namespace post_detail

// x_next of tokens [t0, t1) (rows of `out` from token 0), single-threaded, stored in cache (the
// boundary reads it back at once).
template <typename T>
void post_forward_tokens(T* out, const PostInputs<T>& in, int64_t t0, int64_t t1, int n, int64_t C) {
  with_streams(n, [&](auto S) {
    constexpr int ns = S();
    for (int64_t tok = t0; tok < t1; ++tok)
      post_detail::post_forward_token<T, ns, false>(out + tok * ns * C, in.x + tok * ns * C, in.y + tok * C,
                                             in.H_post + tok * ns, in.H_res + tok * ns * ns, C);
  });
}

// Whether post's backward writes its gradients dx and dy (of N tokens) past the cache (simd.h).
template <typename T>
bool post_gradients_bypass_cache(const PostGradients<T>& g, int64_t N, int n, int64_t C) {
  const int64_t written = N * (n + 1) * C;
  return bypasses_cache(g.dx, C, written) && bypasses_cache(g.dy, C, written);
}

// The gradients of tokens [t0, t1) from dout [t1 − t0, n, C] (the tile's own rows), single-threaded.
template <bool kNonTemporal, typename T>
void post_backward_tokens(const PostGradients<T>& g, const T* dout, const PostInputs<T>& in, int64_t t0, int64_t t1,
                          int n, int64_t C) {
  with_streams(n, [&](auto S) {
    constexpr int ns = S();
    for (int64_t tok = t0; tok < t1; ++tok)
      post_detail::post_backward_token<T, ns, kNonTemporal>(g.dx + tok * ns * C, g.dy + tok * C, g.dH_post + tok * ns,
                                              g.dH_res + tok * ns * ns, dout + (tok - t0) * ns * C, in.x + tok * ns * C,
                                              in.y + tok * C, in.H_post + tok * ns, in.H_res + tok * ns * ns, C);
  });
}

}  // namespace mhc::cpu
