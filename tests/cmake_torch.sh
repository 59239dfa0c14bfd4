#!/usr/bin/env bash
# The build's choice of torch (cmake/torch.cmake), attacked: a Python whose torch is outside the
# supported range, one that cannot import torch, and a path that is not there are each refused at
# configure time in one message line naming the value and what is accepted.
# Usage: cmake_torch.sh SOURCE_DIR
set -u
src=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# fake_python NAME VERSION: a stand-in interpreter that answers the configure step's question
# (torch's version, CMake prefix, package folder) as a torch VERSION would.
fake_python() {
  printf '#!/bin/sh\nprintf "%s\\n/nowhere/share/cmake\\n/nowhere/torch\\n"\n' "$2" > "$work/$1"
  chmod +x "$work/$1"
}
# refused PATTERN -D…: configuring with those flags fails, and CMake's message says PATTERN.
refused() {
  local pattern=$1 out
  shift
  rm -rf "$work/build"
  if out=$(cmake -S "$src" -B "$work/build" -G Ninja -DMHC_CUDA=off "$@" 2>&1); then
    fail "configure $* succeeded"
  else
    # CMake wraps the message, indented, under "CMake Error at …": join it back into one line.
    out=$(printf '%s\n' "$out" | sed -n '/^CMake Error/,/^[^ ]/{/^  /p}' | sed 's/^  //' | tr '\n' ' ')
    printf '%s' "$out" | grep -Eq "$pattern" || fail "configure $*: $out"
  fi
}

fake_python old 1.13.1
refused "torch 1\.13\.1 \($work/old\) is not supported \(accepted: 2\.11 to 2\.14\)" -DMHC_PYTHON="$work/old"
fake_python new 2.15.0
refused "torch 2\.15\.0 \($work/new\) is not supported \(accepted: 2\.11 to 2\.14\)" -DMHC_PYTHON="$work/new"
printf '#!/bin/sh\necho "ModuleNotFoundError: No module named torch" >&2\nexit 1\n' > "$work/bare"
chmod +x "$work/bare"
refused "$work/bare cannot import torch \(ModuleNotFoundError: No module named torch\)" -DMHC_PYTHON="$work/bare"
refused "MHC_PYTHON $work/absent does not exist" -DMHC_PYTHON="$work/absent"

echo "cmake_torch: $failures failed"
[ "$failures" -eq 0 ]
