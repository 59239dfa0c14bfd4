#!/usr/bin/env bash
# libmhc with its CUDA ops, built against torch 2.14.1's CUDA 13.0 wheel on a machine that has nvcc
# and no GPU: compiled, linked (nvcc from the CUDA toolkit, cuBLAS, cudart and the rest from the
# wheel's NVIDIA packages), loaded in that torch, and put through the Python tests, whose CUDA
# cases report skipped without a GPU. The environment is .venv-cuda (5.4 GB, made on first use).
#
# The build takes about 6 minutes on 2 cores (the first install of the wheel one more), so the test
# suite runs it (ctest's cuda.torch_wheel) only when what it reads has changed since the last
# build that passed here: `make cuda-wheel` records the SHA-256 of those files in
# tests/cuda_wheel.sha256, which is committed with them.
#   bash scripts/cuda_wheel_build.sh [--if-changed] [BUILD_DIR]   (default: build-cuda-wheel; make cuda-wheel)
#   --if-changed (ctest): exit 77 (skipped) at once when the files' hash is the recorded one, and
#                record nothing (the suite leaves the checkout as it found it)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if_changed=false
[ "${1:-}" = --if-changed ] && { if_changed=true; shift; }
out=${1:-$root/build-cuda-wheel}
stamp=$root/tests/cuda_wheel.sha256

# What this reads: the kernels, the ops and their headers, the build files, the Python package.
sources_hash() {
  (cd "$root" && git ls-files -z -- src/kernels src/ops src/common/errors.cpp include cmake CMakeLists.txt \
     scripts/cuda_wheel_build.sh scripts/venv.sh python/mhc | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
}
hash=$(sources_hash 2>/dev/null) || hash="(not a git checkout)"
if $if_changed && [ "$hash" = "$(cat "$stamp" 2>/dev/null)" ]; then
  echo "cuda_wheel_build: the CUDA build's sources are those of the last passing build ($hash): skipped"
  exit 77
fi
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
if $if_changed; then
  echo "cuda_wheel_build: passed; \`make cuda-wheel\` records it in $stamp ($hash)"
else
  echo "$hash" > "$stamp.tmp" && mv "$stamp.tmp" "$stamp"
  echo "cuda_wheel_build: passed; $stamp holds $hash (commit it with the sources)"
fi
