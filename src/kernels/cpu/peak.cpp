// The machine's arithmetic ceiling for the CPU kernels: fused multiply-adds per second on 32-byte
// vectors, every thread busy, no memory traffic. `mhc bench layer` divides a case's projection
// FLOPs by it (the FMA bound), beside the copy bound for its bytes, through the op library's
// mhc::cpu_fma_peak_gflops (mhc/machine.h).
#include <omp.h>

#include <algorithm>
#include <chrono>

#include "simd.h"
#include "cpu_kernels.h"

namespace mhc::cpu {

double fma_peak_gflops(int threads) {
  using S = Simd<float>;
  using V = S::V;
  // 12 independent chains: enough to cover the FMA latency (4–5 cycles) on two pipes, and with the
  // two operands they still fit AVX2's 16 registers.
  constexpr int kChains = 12;
  constexpr int64_t kIterations = 4'000'000;
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    float sink = 0;
#pragma omp parallel num_threads(thread_count(threads)) reduction(+ : sink)
    {
      const V scale = S::splat(0.9999999f), shift = S::splat(1e-9f);
      V acc[kChains];
      for (int i = 0; i < kChains; ++i) acc[i] = S::splat(float(i));
      for (int64_t it = 0; it < kIterations; ++it)
        for (int i = 0; i < kChains; ++i) acc[i] = acc[i] * scale + shift;  // one FMA (-ffp-contract=fast)
      for (int i = 0; i < kChains; ++i) sink += acc[i][0];
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double flops = 2.0 * S::W * kChains * double(kIterations) * thread_count(threads);
    if (sink == -1.0f) best = 0;  // keeps the loop's result alive
    best = std::max(best, flops / seconds / 1e9);
  }
  return best;
}

}  // namespace mhc::cpu
