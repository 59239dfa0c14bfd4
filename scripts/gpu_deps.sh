#!/usr/bin/env bash
# Fetches, on a Debian 12 machine, the .debs of the C++ packages that the full build needs and a lent
# GPU machine lacks (it has no package registry): scripts/gpu_check.sh unpacks them into its build
# folder. Into .gpu-deps/ (git-ignored, about 6.5 MB): name it in the device run's `carry`.
#   bash scripts/gpu_deps.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# scripts/setup.sh's C++ packages with the libraries their .so links and CMake files name, and
# pkgconf for SentencePiece's .pc file.
packages=(
  libgloo-dev libgtest-dev libbenchmark-dev libbenchmark1debian
  libsentencepiece-dev libsentencepiece0 libprotobuf-lite32
  libssl-dev libssl3 nlohmann-json3-dev libtomlplusplus-dev libtomlplusplus3
  pkgconf pkgconf-bin libpkgconf3
)
mkdir -p "$root/.gpu-deps"
cd "$root/.gpu-deps"
rm -f ./*.deb
apt-get download "${packages[@]}"
echo "gpu_deps: $(find . -name "*.deb" | wc -l) packages, $(du -sh . | cut -f1), in $root/.gpu-deps"
