// Fused CPU kernels for `post`: x_next = H_res·x + H_post^T·y (DESIGN.md §1, §3 step 1), parallel
// over tokens. Per token the n input streams and y (n+1 rows of C) are read once from memory and the
// n output streams written once: (2n+1)·C values moved, where the unfused form moves (3n+1)·C or
// more. The per-token arithmetic is post_tokens.h's. Outputs of kNonTemporalBytes or more are
// written with non-temporal stores (simd.h).
#include <omp.h>

#include "cpu_kernels.h"
#include "post_tokens.h"

namespace mhc::cpu {
namespace {

// token(tok, nt, streams) for every token, split over the threads, with nt (non-temporal stores,
// simd.h) and the stream count n as compile-time constants.
// Tokens per thread at least: fewer are not worth a thread's start (decode runs one per sequence).
constexpr int64_t kPostTileTokens = 16;

template <typename F>
void for_each_token(int64_t N, int n, int threads, bool non_temporal, F&& token) {
  with_flag(non_temporal, [&](auto nt) {
    with_streams(n, [&](auto streams) {
#pragma omp parallel num_threads(thread_count(threads, (N + kPostTileTokens - 1) / kPostTileTokens))
      {
#pragma omp for schedule(static)
        for (int64_t tok = 0; tok < N; ++tok) token(tok, nt, streams);
        non_temporal_fence();
      }
    });
  });
}

}  // namespace

template <typename T>
void post_forward(T* out, const T* x, const T* y, const T* H_post, const T* H_res, int64_t N, int n, int64_t C,
                  int threads) {
  for_each_token(N, n, threads, bypasses_cache(out, C, N * n * C), [&](int64_t tok, auto nt, auto streams) {
    constexpr int ns = decltype(streams)::value;
    post_detail::post_forward_token<T, ns, decltype(nt)::value>(out + tok * ns * C, x + tok * ns * C, y + tok * C,
                                                                H_post + tok * ns, H_res + tok * ns * ns, C);
  });
}

template <typename T>
void post_backward(T* dx, T* dy, T* dH_post, T* dH_res, const T* dout, const T* x, const T* y, const T* H_post,
                   const T* H_res, int64_t N, int n, int64_t C, int threads) {
  const bool non_temporal = post_gradients_bypass_cache(PostGradients<T>{dx, dy, dH_post, dH_res}, N, n, C);
  for_each_token(N, n, threads, non_temporal, [&](int64_t tok, auto nt, auto streams) {
    constexpr int ns = decltype(streams)::value;
    post_detail::post_backward_token<T, ns, decltype(nt)::value>(
        dx + tok * ns * C, dy + tok * C, dH_post + tok * ns, dH_res + tok * ns * ns, dout + tok * ns * C,
        x + tok * ns * C, y + tok * C, H_post + tok * ns, H_res + tok * ns * ns, C);
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
