// What this machine can do, for the benchmarks to set their measurements against: the CPU kernels'
// arithmetic ceiling (src/kernels/cpu/peak.cpp), reached through the op library so that no tool
// includes the private kernel headers.
#pragma once

namespace mhc {

// Fused multiply-adds per second of `threads` threads (0: OpenMP's default) on the CPU kernels'
// 32-byte vectors, no memory traffic, in GFLOP/s (2 per multiply-add): `mhc bench layer` sets a
// case's projection FLOPs against it. Measured afresh at each call.
double cpu_fma_peak_gflops(int threads);

}  // namespace mhc
