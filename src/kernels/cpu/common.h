// Helpers shared by the CPU kernels: a 32-byte vector type, a compile-time stream count, the
// thread count.
//
// GCC's vector extensions keep the kernels portable (AVX2 with -march=native, SSE pairs
// otherwise) while letting us hold accumulators in registers explicitly.
#pragma once

#include <omp.h>

#include <cstring>
#include <type_traits>

#include "mhc/variant.h"

namespace mhc::cpu {

// W lanes of T in one 32-byte vector; unaligned loads and stores.
template <typename T>
struct Simd {
  static constexpr int W = 32 / sizeof(T);
  typedef T V __attribute__((vector_size(32)));
  static V load(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  }
  static void store(T* p, V v) { std::memcpy(p, &v, sizeof(V)); }
  // All lanes = a. Spelled out so GCC emits one broadcast (a lane loop becomes 4 inserts + 1 permute).
  static V splat(T a) {
    if constexpr (W == 8) return V{a, a, a, a, a, a, a, a};
    else return V{a, a, a, a};
  }
};

// Calls f(std::integral_constant<int, n>{}) for the runtime stream count n ≤ kMaxStreams: per-token
// loops over streams unroll fully, and their accumulators stay in registers, when n is a constant.
template <typename F>
void with_streams(int n, F&& f) {
  switch (n) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 5: return f(std::integral_constant<int, 5>{});
    case 6: return f(std::integral_constant<int, 6>{});
    case 7: return f(std::integral_constant<int, 7>{});
    default: return f(std::integral_constant<int, 8>{});
  }
}

// The kernels' `threads` argument: a positive count, or 0 for OpenMP's default.
inline int thread_count(int requested) { return requested > 0 ? requested : omp_get_max_threads(); }

}  // namespace mhc::cpu
