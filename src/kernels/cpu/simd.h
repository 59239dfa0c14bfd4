// Helpers shared by the CPU kernels: a 32-byte vector type, the thread count (and the compile-time
// stream count of ../coefficients.h).
//
// GCC's vector extensions keep the kernels portable (AVX2 with -march=native, SSE pairs
// otherwise) while letting us hold accumulators in registers explicitly.
#pragma once

#include <omp.h>

#include <cstring>
#include <type_traits>

#include "../coefficients.h"

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

using kernels::with_streams;

// The kernels' `threads` argument: a positive count, or 0 for OpenMP's default.
inline int thread_count(int requested) { return requested > 0 ? requested : omp_get_max_threads(); }

}  // namespace mhc::cpu
