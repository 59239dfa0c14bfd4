#!/usr/bin/env bash
# Bad command lines: each must exit with status 2 and print exactly one line, on stderr, that
# matches the expected message (it names the bad value and what is accepted).
set -u
mhc=$1
failures=0
checks=0

expect_error() {  # expect_error REGEX ARGS...
  local pattern=$1
  shift
  local out err status
  checks=$((checks + 1))
  err=$("$mhc" "$@" 2>&1 >/dev/null)
  status=$?
  out=$("$mhc" "$@" 2>/dev/null)
  if [ "$status" -ne 2 ] || [ -n "$out" ] || [ "$(printf '%s\n' "$err" | wc -l)" -ne 1 ] ||
     ! printf '%s' "$err" | grep -Eq "^error: $pattern"; then
    echo "FAIL: mhc $* -> status $status, stderr: $err"
    failures=$((failures + 1))
  fi
}

expect_error "mhc: unknown command 'trian' \(accepted: train, sample, eval, analyze, compare, launch, bench\)" trian
expect_error "mhc bench: unknown benchmark 'layers' \(accepted: layer, train, memory, pipeline, decode\)" bench layers
expect_error "--recompute 'fast' is not a recomputation policy \(accepted: none, streams, blocks\)" bench memory --recompute none,fast
expect_error "mhc bench memory: unknown --preset 'huge' \(accepted: deep, small, tiny\)" bench memory --preset huge
# Issue 35, item 4: without the plain residual's no-recomputation row every ratio was NaN or wrong.
expect_error "mhc bench memory: every row is measured against the plain residual without recomputation, so --variant must include residual and --recompute none \(got --variant mhc,hc --recompute none\)" \
  bench memory --preset tiny --variant mhc,hc --recompute none
expect_error "mhc bench memory: .*\(got --variant mhc,residual --recompute streams,blocks\)" \
  bench memory --preset tiny --variant mhc,residual --recompute streams,blocks
# mhc bench decode: its own flags, and an n the variant does not take, before any model is timed.
expect_error "--batch must be a whole number in \[1, 256\], got '0'" bench decode --batch 0
expect_error "--prompt must be a whole number in \[1, [0-9]+\], got 'long'" bench decode --prompt long
expect_error "kromhc takes n = 2\^a.3\^b streams .*got n = 5" bench decode --variant residual,kromhc --streams 5 --preset tiny
expect_error "mhc bench decode: choose one of --json, --markdown" bench decode --json --markdown
expect_error "mhc bench layer: unknown flag --widht \(accepted: --variant, .*--json" bench layer --widht 8
expect_error "unknown variant 'sinkhorn' \(accepted: residual, hc, mhc, mhc-v4, mhc-lite, kromhc, ihc, jpmhc, gomhc\)" bench layer --variant mhc,sinkhorn
expect_error "--tokens must be a whole number in \[1, [0-9]+\], got 'many'" bench layer --tokens many
expect_error "--dim must be a whole number in \[1, [0-9]+\], got '-5'" bench layer --dim 512,-5
expect_error "--reps must be a whole number in \[5, [0-9]+\], got '2'" bench layer --reps 2
expect_error "mhc-lite takes 1 to 5 streams .*got n = 6; for more streams use KromHC" bench layer --kind mhc-lite --streams 6
# The orthogonal variants' options and stream limits (DESIGN.md §11).
expect_error "--block-size must be a whole number in \[1, 2\], got '3'" train --variant gomhc --block-size 3 --steps 1
expect_error "--cayley-iters must be a whole number in \[0, 8\], got '9'" train --variant jpmhc --cayley-iters 9 --steps 1
expect_error "gomhc takes 1 to 8 streams at block_size 2 \(d = n·block_size ≤ 16\), got n = 9" train --variant gomhc --streams 9 --steps 1
expect_error "gomhc takes 1 to 8 streams at block_size 2 .*got n = 12" bench layer --variant gomhc --streams 12
expect_error "gomhc takes no option 'cayley_iters' \(accepted: block_size\)" bench layer --variant gomhc:cayley_iters=2
expect_error "mhc bench layer: --dim needs a value" bench layer --dim
expect_error "mhc bench layer: unexpected argument 'fast'" bench layer fast
expect_error "--device 'tpu' is not a device \(accepted: cpu, cuda, cuda:N\)" bench layer --device tpu
expect_error "--dtype 'fp8' is not supported \(accepted: float32, bfloat16\)" bench layer --dtype fp8
if ! "$mhc" bench layer --device cuda --tokens 8 --dim 8 --reps 5 > /dev/null 2>&1; then  # no GPU here
  expect_error "--device cuda: no CUDA GPU is usable here" bench layer --device cuda
fi

# Names a JSON file will hold must be UTF-8: refused before any work, with the bad byte shown
# (issue 35, item 16; they used to fail late with nlohmann's raw type_error.316).
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
bad=$'runs/bad\xffname'
expect_error "--out 'runs/bad\\\\xffname' is not valid UTF-8 \\(it is written into a JSON file" train --out "$bad" --steps 1
expect_error "--data 'bad\\\\xfe.txt' is not valid UTF-8" train --data $'bad\xfe.txt' --out "$scratch/run" --steps 1
expect_error "--out '.*\\\\xff.*' is not valid UTF-8" compare --out "$scratch/"$'\xff' --steps 1
printf 'x' > "$scratch/"$'shard\xff.safetensors'
expect_error "--deepseek-v4: the shard '.*shard\\\\xff.safetensors' is not valid UTF-8" analyze --deepseek-v4 "$scratch"

echo "$((checks - failures)) passed, $failures failed"
[ "$failures" -eq 0 ]
