#!/usr/bin/env bash
# Builds the standalone CUDA kernel test (tests/test_cuda_kernels.cu: no LibTorch, no CMake) with nvcc
# and runs it on this machine's GPU: the correctness checks, the same under compute-sanitizer,
# and the benchmark. For GPU machines that lack the project's CPU-side dependencies.
#   bash scripts/cuda_check.sh [OUT_DIR]      (default: build-cuda)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-build-cuda}
mkdir -p "$out"
nvcc=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
arch=${CUDA_ARCH:-90}
flags=(-std=c++17 -O3 -I"$root/include" --expt-relaxed-constexpr -Xcompiler -fopenmp,-O3)
# The four translation units compile in parallel; cuda_kernels.cu dominates.
"$nvcc" "${flags[@]}" -arch=sm_$arch -c "$root/src/kernels/cuda/cuda_kernels.cu" -o "$out/cuda_kernels.o" &
"$nvcc" "${flags[@]}" -arch=sm_$arch -c "$root/tests/test_cuda_kernels.cu" -o "$out/test_cuda_kernels.o" &
for f in variant cpu/pre cpu/post; do
  g++ -std=c++17 -O3 -fopenmp -ffp-contract=fast -march=native -I"$root/include" -c "$root/src/kernels/$f.cpp" -o "$out/$(basename $f).o" &
done
wait
"$nvcc" -arch=sm_$arch "$out"/*.o -o "$out/cuda_kernels" -lcublas -Xcompiler -fopenmp
"$out/cuda_kernels"
if command -v compute-sanitizer > /dev/null || [ -x /usr/local/cuda/bin/compute-sanitizer ]; then
  sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  "$sanitizer" --tool memcheck --error-exitcode 1 "$out/cuda_kernels" | tail -3
fi
"$out/cuda_kernels" --bench
