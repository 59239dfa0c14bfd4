// The stream count n as a compile-time constant (with_streams; with_constant for any small size),
// apart from the coefficient math (variants/*.h) that also uses it: kernels that need only the
// constant (post's) include only this.
// Compiled for the CPU kernels and, under nvcc, for the CUDA kernels (MHC_HD).
#pragma once

#include <type_traits>

#include "mhc/variant.h"

#ifdef __CUDACC__
#define MHC_HD __host__ __device__
#else
#define MHC_HD
#endif

namespace mhc::kernels {

// Calls f(std::integral_constant<int, value>{}) for a runtime value in [1, Most]: loops whose trip
// count is that value unroll fully, and their accumulators stay in registers, when it is a constant.
template <int Most, int N = 1, typename F>
MHC_HD void with_constant(int value, F&& f) {
  if constexpr (N < Most) {
    if (value != N) return with_constant<Most, N + 1>(value, f);
  }
  return f(std::integral_constant<int, N>{});
}

// with_constant for the stream count n ≤ Most: per-token loops over streams.
template <int Most = kMaxStreams, typename F>
MHC_HD void with_streams(int n, F&& f) {
  with_constant<Most>(n, f);
}

// The streams up to which per-token coefficient loops are unrolled (with_unrolled_streams).
constexpr int kUnrolledStreams = 8;

// f(std::integral_constant<int, n>{}) for n ≤ kUnrolledStreams, else f(n): code written over
// `auto N` unrolls where n is small and stays one loop where it is not.
template <typename F>
MHC_HD void with_unrolled_streams(int n, F&& f) {
  if (n <= kUnrolledStreams) return with_streams<kUnrolledStreams>(n, f);
  return f(n);
}

}  // namespace mhc::kernels
