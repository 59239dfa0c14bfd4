#!/usr/bin/env bash
# Builds the libFuzzer target tests/fuzz/libfuzzer_readers.cpp with Debian's clang (clang-14 and
# libclang-rt-14-dev; not part of the default build, which scripts/setup.sh provides with GCC).
# The readers under attack and the helpers they call — src/train/checkpoint.cpp, settings.cpp,
# src/common/files.cpp, parse.cpp, src/data/corpus.cpp, and toml++ (header-only here) — are
# compiled with coverage, AddressSanitizer and UBSan; the rest of mhc_train (the model code
# settings.cpp links to) comes from the regular build in BUILD.
#
# Usage: tests/fuzz/build_libfuzzer.sh BUILD OUT     (e.g. build build/fuzz)
# Then a million inputs, from nothing (the custom mutator starts from valid inputs), on one core:
#   mkdir -p build/fuzz/corpus && build/fuzz/libfuzzer_readers -runs=1000000 -max_len=65536 \
#       -rss_limit_mb=4096 -malloc_limit_mb=2048 -print_final_stats=1 build/fuzz/corpus
# It prints "Done 1000000 runs" and exits 0 when no input crashed; a crashing input is saved as
# crash-<sha1> in the working folder, and `libfuzzer_readers crash-<sha1>` replays it.
set -eu
build=$(readlink -f "$1")
out=$2
src=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$out/obj"

# NDEBUG as in the shipped build: toml++ 3.3's parse_key() asserts on a NUL after '[' where its
# release build returns the parse error mhc reports (found by this fuzzer).
flags=(-std=gnu++17 -O1 -g -fno-omit-frame-pointer -DNDEBUG -D_GLIBCXX_USE_CXX11_ABI=1 -DTOML_HEADER_ONLY=1
       -I"$src/include" -isystem /usr/include/torch/csrc/api/include)
# One check is left out, for a finding in toml++ 3.3 (not ours) that would stop every run within
# seconds: its is_non_ascii_horizontal_whitespace() reaches TOML_UNREACHABLE for code points such
# as U+02DF (Debian's build answers those inputs with a parse error).
instrument=(-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize=unreachable
            -fno-sanitize-recover=undefined)
sources=(tests/fuzz/libfuzzer_readers.cpp tests/fuzz/mutator.cpp tests/fuzz/readers.cpp src/train/checkpoint.cpp
         src/train/settings.cpp src/common/files.cpp src/common/parse.cpp src/data/corpus.cpp)
objects=()
for s in "${sources[@]}"; do
  o="$out/obj/$(echo "$s" | tr / _).o"
  objects+=("$o")
  clang++-14 "${flags[@]}" "${instrument[@]}" -c "$src/$s" -o "$o"
done
torch=/usr/lib/x86_64-linux-gnu
clang++-14 -fsanitize=fuzzer,address,undefined "${objects[@]}" -o "$out/libfuzzer_readers" \
  -Wl,-rpath,"$build" "$build/libmhc_train.a" "$build/libmhc.so" \
  -Wl,--no-as-needed "$torch/libtorch.so" "$torch/libtorch_cpu.so" "$torch/libc10.so" -Wl,--as-needed \
  -lcrypto -lgomp -ldl -lpthread
echo "built $out/libfuzzer_readers"
