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
  python3-torch python3-pytest  # the Python front end and its tests (/usr/bin/python3)
)

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
