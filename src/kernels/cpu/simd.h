// Helpers shared by the CPU kernels: a 32-byte vector type, the thread count (and the compile-time
// stream count of ../streams.h).
//
// GCC's vector extensions keep the kernels portable (AVX2 with -march=native, SSE pairs
// otherwise) while letting us hold accumulators in registers explicitly.
#pragma once

#include <omp.h>
#if defined(__SSE__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../streams.h"

namespace mhc::cpu {

// W lanes of T in one 32-byte vector; unaligned loads and stores.
template <typename T>
struct Simd {
  static constexpr int W = 32 / sizeof(T);
  typedef T V __attribute__((vector_size(32)));
  // V at T's alignment and allowed to alias T: a plain unaligned load or store (a memcpy into a
  // local V makes GCC bounce a tile's accumulators through the stack).
  typedef T Unaligned __attribute__((vector_size(32), aligned(alignof(T)), may_alias));
  static V load(const T* p) { return *reinterpret_cast<const Unaligned*>(p); }
  static void store(T* p, V v) { *reinterpret_cast<Unaligned*>(p) = v; }
  // A non-temporal store (p 32-byte aligned): see bypasses_cache.
  static void store_nt(T* p, V v) {
#ifdef __AVX__
    if constexpr (W == 8) _mm256_stream_ps(p, v);
    else _mm256_stream_pd(p, v);
#else
    store(p, v);
#endif
  }
  // All lanes = a. Spelled out so GCC emits one broadcast (a lane loop becomes 4 inserts + 1 permute).
  static V splat(T a) {
    if constexpr (W == 8) return V{a, a, a, a, a, a, a, a};
    else return V{a, a, a, a};
  }
};

// Values of T in one 64-byte cache line.
template <typename T>
constexpr int64_t kLineValues = 64 / sizeof(T);

// Makes v opaque to the optimiser, so a loaded vector that feeds several FMAs stays one register
// load instead of being folded into each FMA as a memory operand (which doubles the loads).
template <typename V>
inline void keep_in_register(V& v) {
#if defined(__GNUC__) && defined(__AVX512VL__)
  asm("" : "+v"(v));  // any of the 32 vector registers
#elif defined(__GNUC__) && defined(__SSE2__)
  asm("" : "+x"(v));
#endif
}

// The sum of v's lanes, in lane order.
template <typename T>
T horizontal_sum(typename Simd<T>::V v) {
  T s = 0;
  for (int l = 0; l < Simd<T>::W; ++l) s += v[l];
  return s;
}

// sums[j] = Σ_l v[j][l] for J vectors: the horizontal sums of a row of dot-product accumulators.
// For 8 float vectors on AVX, a transposing tree of 6 horizontal adds and 2 lane swaps;
// elsewhere a lane loop.
template <typename T, int J>
void sum_lanes(const typename Simd<T>::V (&v)[J], T (&sums)[J]) {
#ifdef __AVX__
  if constexpr (std::is_same_v<T, float> && J == 8) {
    const __m256 a = _mm256_hadd_ps(v[0], v[1]), b = _mm256_hadd_ps(v[2], v[3]);
    const __m256 c = _mm256_hadd_ps(v[4], v[5]), d = _mm256_hadd_ps(v[6], v[7]);
    // ab = [Σ v0, Σ v1, Σ v2, Σ v3] over lanes 0-3 | the same over lanes 4-7; cd likewise for v4-v7
    const __m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d);
    const __m256 s = _mm256_permute2f128_ps(ab, cd, 0x20) + _mm256_permute2f128_ps(ab, cd, 0x31);
    _mm256_storeu_ps(sums, s);
    return;
  }
#endif
  for (int j = 0; j < J; ++j) sums[j] = horizontal_sum<T>(v[j]);
}

// Outputs written past the cache. A plain store to a line that is not in cache first reads the line
// (read for ownership), so a streaming kernel that reads r values and writes w moves r + 2w; a
// non-temporal store writes whole lines without reading them, r + w, as a memcpy does. That pays
// where the output is too large for its next reader to find it in cache anyway: kNonTemporalBytes
// or more (build/bench_kernels, 2 threads, C = 512, medians of 5 interleaved runs: post forward
// 2.91 → 2.09 ms, pre backward 9.51 → 8.50 ms; a training step of the small preset, whose
// [2048, 4, 512] states are 16 MiB, no slower). bypasses_cache(p, row, count): whether an output of
// `count` values in rows of `row` at p is written so; its rows must be 32-byte aligned (LibTorch
// allocates at 64 bytes; the row a whole number of vectors), otherwise the kernel stores as usual.
constexpr int64_t kNonTemporalBytes = int64_t(8) << 20;

template <typename T>
bool bypasses_cache(const T* p, int64_t row, int64_t count) {
  return count * int64_t(sizeof(T)) >= kNonTemporalBytes && reinterpret_cast<uintptr_t>(p) % 32 == 0 &&
         row % Simd<T>::W == 0;
}

// v into p, past the cache (kNonTemporal) or not.
template <bool kNonTemporal, typename T>
void put(T* p, typename Simd<T>::V v) {
  if constexpr (kNonTemporal) Simd<T>::store_nt(p, v);
  else Simd<T>::store(p, v);
}

// Non-temporal stores are weakly ordered: a thread that made them fences before the barrier that
// hands its output to other threads.
inline void non_temporal_fence() {
#ifdef __SSE__
  _mm_sfence();
#endif
}

// f(std::true_type{}) or f(std::false_type{}): a flag known at run time as a compile-time constant
// (decltype(flag)::value), so that each case gets its own loops.
template <typename F>
void with_flag(bool flag, F&& f) {
  if (flag) f(std::true_type{});
  else f(std::false_type{});
}

using kernels::with_streams;

// The kernels' `threads` argument: a positive count, or 0 for OpenMP's default.
inline int thread_count(int requested) { return requested > 0 ? requested : omp_get_max_threads(); }
// The threads worth starting for `pieces` of work (tiles of tokens): no more than there are. At
// decode sizes (one tile) an op then runs on the calling thread alone, with no thread to wake and
// wait for, which on a loaded machine cost milliseconds per op.
inline int thread_count(int requested, int64_t pieces) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(thread_count(requested), pieces)));
}

}  // namespace mhc::cpu
