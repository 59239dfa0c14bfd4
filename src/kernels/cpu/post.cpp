// Fused CPU kernels for `post`: x_next = H_res·x + H_post^T·y (DESIGN.md §1, §3 step 1), parallel
// over tokens. Per token the n input streams and y (n+1 rows of C) are read once from memory and the
// n output streams written once: (2n+1)·C values moved, where the unfused form moves (3n+1)·C or
// more. The per-token arithmetic is post_tokens.h's. Outputs past kStreamingBytes are written with
// non-temporal stores (simd.h).
#include <omp.h>

#include <type_traits>

#include "cpu_kernels.h"
#include "post_tokens.h"

namespace mhc::cpu {
namespace {

// token(tok, stream, streams) for every token, split over the threads, with stream (non-temporal
// stores, simd.h) and the stream count as compile-time constants.
template <typename F>
void for_each_token(int64_t N, int n, int threads, bool stream, F&& token) {
  auto run = [&](auto kStream) {
    with_streams(n, [&](auto streams) {
#pragma omp parallel num_threads(thread_count(threads))
      {
#pragma omp for schedule(static)
        for (int64_t tok = 0; tok < N; ++tok) token(tok, kStream, streams);
        stream_fence();
      }
    });
  };
  if (stream) run(std::true_type{});
  else run(std::false_type{});
}

}  // namespace

template <typename T>
void post_forward(T* out, const T* x, const T* y, const T* H_post, const T* H_res, int64_t N, int n, int64_t C,
                  int threads) {
  for_each_token(N, n, threads, streams_output(out, C, N * n * C), [&](int64_t tok, auto stream, auto streams) {
    constexpr int ns = decltype(streams)::value;
    post_detail::post_forward_token<T, ns, decltype(stream)::value>(out + tok * ns * C, x + tok * ns * C, y + tok * C,
                                                                    H_post + tok * ns, H_res + tok * ns * ns, C);
  });
}

template <typename T>
void post_backward(T* dx, T* dy, T* dH_post, T* dH_res, const T* dout, const T* x, const T* y, const T* H_post,
                   const T* H_res, int64_t N, int n, int64_t C, int threads) {
  const int64_t written = N * (n + 1) * C;
  const bool stream = streams_output(dx, C, written) && streams_output(dy, C, written);
  for_each_token(N, n, threads, stream, [&](int64_t tok, auto stream, auto streams) {
    constexpr int ns = decltype(streams)::value;
    post_detail::post_backward_token<T, ns, decltype(stream)::value>(
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
