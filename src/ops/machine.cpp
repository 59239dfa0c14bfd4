// mhc/machine.h: the CPU kernels' FMA peak, from the framework-free kernels.
#include "mhc/machine.h"

#include "../kernels/cpu/cpu_kernels.h"

namespace mhc {

double cpu_fma_peak_gflops(int threads) { return cpu::fma_peak_gflops(threads); }

}  // namespace mhc
