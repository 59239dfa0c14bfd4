#!/usr/bin/env bash
# libmhc with its CUDA ops, built against torch 2.14.1's CUDA 13.0 wheel on a machine that has nvcc
# and no GPU: compiled, linked (cuBLAS and the rest from the wheel's NVIDIA packages, nvcc and
# cudart from the CUDA toolkit), loaded in that torch, and put through the Python tests, whose CUDA
# cases report skipped without a GPU. The environment is .venv-cuda (5.4 GB, made on first use).
#   bash scripts/cuda_wheel_build.sh [BUILD_DIR]      (default: build-cuda-wheel; make cuda-wheel)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/build-cuda-wheel}
source "$root/scripts/venv.sh"
ensure_venv "$root/.venv-cuda" torch==2.14.1 numpy==2.4.6 pytest==9.2.0
python=$root/.venv-cuda/bin/python

cmake -S "$root" -B "$out" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMHC_OPS_ONLY=ON -DMHC_CUDA=on \
  -DMHC_PYTHON="$python" > "$out.cmake.log" 2>&1 || { tail -20 "$out.cmake.log"; exit 1; }
grep -q "^-- CUDA ops: linked" "$out.cmake.log" || { echo "cuda_wheel_build: the CUDA ops are not linked:"; grep "^-- CUDA" "$out.cmake.log"; exit 1; }
cmake --build "$out"

export MHC_LIBRARY=$out/libmhc.so PYTHONPATH=$root/python
"$python" - <<'PY'
import torch, mhc
kernels = [k for k in ("CPU", "CUDA") if torch._C._dispatch_has_kernel_for_dispatch_key("mhc::pre", k)]
print(f"loaded {mhc._library.find_library()} in torch {torch.__version__} (CUDA {torch.version.cuda}, "
      f"GPU {'available' if torch.cuda.is_available() else 'not available'}); mhc::pre kernels: {', '.join(kernels)}")
assert kernels == ["CPU", "CUDA"], kernels
PY
"$python" -m pytest -q -p no:cacheprovider -rs "$root/python/tests"
