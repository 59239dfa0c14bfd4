#!/usr/bin/env bash
# On a GPU machine with a CUDA torch 2.x, nvcc, cmake and ninja (and nothing else): builds libmhc
# with its CUDA ops against that torch (-DMHC_OPS_ONLY=ON: the tool and the C++ test suite need the
# packages of scripts/setup.sh), then runs the CUDA op tests (python/tests/test_cuda.py), the
# standalone kernel test plain and under compute-sanitizer, and both benchmarks at N = 16384,
# n = 4, C in {1280, 4096}, bf16.
#   bash scripts/cuda_torch_check.sh [BUILD_DIR]      (default: build-torch-cuda; PYTHON=python3)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-build-torch-cuda}
python=$(command -v "${PYTHON:-python3}") || { echo "cuda_torch_check: no ${PYTHON:-python3} on PATH" >&2; exit 1; }
cmake -S "$root" -B "$out" -G Ninja -DMHC_OPS_ONLY=ON -DMHC_CUDA=on -DMHC_PYTHON="$python" > "$out.cmake.log" ||
  { tail -20 "$out.cmake.log"; exit 1; }
ninja -C "$out"
export MHC_LIBRARY=$out/libmhc.so PYTHONPATH=$root/python
"$python" "$root/python/tests/test_cuda.py"
"$out/tests/cuda_kernels"
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
"$sanitizer" --tool memcheck --error-exitcode 1 "$out/tests/cuda_kernels" | tail -3
"$python" "$root/python/bench.py" --device cuda --dtype bfloat16 --tokens 16384 --dim 1280,4096 \
  --variant residual,hc,mhc,mhc-lite --markdown
"$out/tests/cuda_kernels" --bench
