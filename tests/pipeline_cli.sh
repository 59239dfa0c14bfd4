#!/usr/bin/env bash
# Pipeline-parallel `mhc train --pipeline-stages` on loopback (mhc/pipeline.h): 2 stages reproduce
# one process's losses at the same global batch and micro-batches (residual, mhc, mhc-lite; 1F1B and
# GPipe; 2 stages x 2 replicas), the bf16 stream state stays within bf16's tolerance, checkpoints
# resume across (stages, replicas) layouts, a killed or stalled stage makes the other exit non-zero
# within --dist-timeout naming it, SIGTERM to one stage stops both with a checkpoint, and bad layouts
# get a one-line error.
# Usage: pipeline_cli.sh BUILD/mhc SOURCE_DIR [section]   (section: equivalence resume failure errors;
# default: all)
source "$(dirname "$0")/cli_common.sh"
source "$(dirname "$0")/dist_common.sh"

# 2 blocks, so that 2 stages hold one each; 4 micro-batches per step.
small=(--data "$work/text.txt" --data-dir "$work/data" --tokenizer byte --dim 32 --layers 2 --heads 2 --seq-len 32
       --batch 8 --accum 4 --threads 1 --eval-every 0 --eval-batches 2 --sample-tokens 0 --warmup 2 --diag-every 0)

# reference NAME STEPS [FLAG…]: one process, the run a pipelined one must reproduce.
reference() {
  local name=$1 steps=$2
  shift 2
  [ -f "$work/$name/metrics.jsonl" ] || "$mhc" train "${small[@]}" "$@" --steps "$steps" --out "$work/$name" > "$work/$name.log" 2>&1 ||
    fail "reference $name: $(tail -1 "$work/$name.log")"
}
# pipelined NAME NPROC [FLAG…]: `mhc launch --nproc NPROC -- train` with FLAGs, 10 steps.
pipelined() {
  local name=$1 nproc=$2
  shift 2
  "$mhc" launch --nproc "$nproc" -- train "${small[@]}" "$@" --steps 10 --out "$work/$name" > "$work/$name.log" 2>&1 ||
    fail "$name: $(grep -m1 error "$work/$name.log")"
}

if want equivalence; then
  for variant in residual mhc mhc-lite; do
    reference "one-$variant" 10 --variant "$variant"
    pipelined "two-$variant" 2 --variant "$variant" --pipeline-stages 2
    grep -q "2 pipeline stages (1f1b, stream state float32 between stages; this rank: stage 0, blocks 0 to 0)" \
      "$work/two-$variant.log" || fail "equivalence: $variant: not a 2-stage run: $(head -1 "$work/two-$variant.log")"
    same_losses "$work/two-$variant" "$work/one-$variant" || fail "equivalence: $variant, 2 stages vs 1 process"
    [ "$(wc -l < "$work/two-$variant/metrics.jsonl")" -eq 10 ] || fail "equivalence: rank 0 alone must log (10 lines)"
  done
  pipelined gpipe 2 --pipeline-stages 2 --schedule gpipe
  same_losses "$work/gpipe" "$work/one-mhc" || fail "equivalence: GPipe, 2 stages vs 1 process"
  pipelined grid 4 --pipeline-stages 2
  grep -q "^each stage's parameters identical on its 2 replicas" "$work/grid.log" || fail "equivalence: 2 x 2: replicas differ"
  same_losses "$work/grid" "$work/one-mhc" || fail "equivalence: 2 stages x 2 replicas vs 1 process"
  # bf16 between stages: every stream value is rounded to 8 significant bits (relative error at most
  # 2^-9) on the way; the losses may move by no more than one bf16 step, 2^-8 relative.
  pipelined bf16 2 --pipeline-stages 2 --pipe-dtype bfloat16
  grep -q "stream state bfloat16 between stages" "$work/bf16.log" || fail "equivalence: --pipe-dtype bfloat16 not used"
  same_losses "$work/bf16" "$work/one-mhc" 1 0.00390625 || fail "equivalence: bf16 stream state beyond bf16 tolerance"
fi

if want resume; then
  reference uninterrupted 20
  "$mhc" launch --nproc 2 -- train "${small[@]}" --pipeline-stages 2 --steps 20 --stop-after 10 --out "$work/a" > "$work/a1.log" 2>&1 &&
    "$mhc" train --resume "$work/a" --stop-after 0 > "$work/a2.log" 2>&1 ||
    fail "resume 2 stages -> 1 process: $(tail -1 "$work/a2.log")"
  same_losses "$work/a" "$work/uninterrupted" || fail "resume 2 stages -> 1 process: losses differ from the uninterrupted run"
  "$mhc" train "${small[@]}" --steps 20 --stop-after 10 --out "$work/b" > "$work/b1.log" 2>&1 &&
    "$mhc" launch --nproc 2 -- train --resume "$work/b" --pipeline-stages 2 --stop-after 0 > "$work/b2.log" 2>&1 ||
    fail "resume 1 process -> 2 stages: $(tail -1 "$work/b2.log")"
  same_losses "$work/b" "$work/uninterrupted" || fail "resume 1 process -> 2 stages: losses differ from the uninterrupted run"
fi

if want failure; then
  survivor_exits 1 KILL --pipeline-stages 2   # the last stage dies: the first's transfers fail
  survivor_exits 0 KILL --pipeline-stages 2   # the first stage (and the store's host) dies
  survivor_exits 1 STOP --pipeline-stages 2   # a stalled stage: only the timeout can tell
  survivor_exits 0 STOP --pipeline-stages 2
  # SIGTERM to the last stage alone: both stages stop after the same step, and rank 0 checkpoints it.
  port=$(free_port) pids=()
  for rank in 0 1; do
    RANK=$rank WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
      "$mhc" train "${small[@]}" --pipeline-stages 2 --steps 100000 --dist-timeout 20 --out "$work/term" > "$work/term.$rank.log" 2>&1 &
    pids+=($!)
  done
  for _ in $(seq 1 600); do [ -f "$work/term/metrics.jsonl" ] && [ "$(wc -l < "$work/term/metrics.jsonl")" -ge 3 ] && break; sleep 0.1; done
  kill -TERM "${pids[1]}"
  for rank in 0 1; do wait "${pids[$rank]}" || fail "SIGTERM to stage 1: rank $rank exited $?: $(tail -1 "$work/term.$rank.log")"; done
  grep -q "stopped by a signal to another rank at step" "$work/term.0.log" || fail "SIGTERM to stage 1: $(tail -1 "$work/term.0.log")"
  [ -e "$work/term/latest" ] || fail "SIGTERM to stage 1: no checkpoint"
fi

if want errors; then
  env4=(RANK=0 WORLD_SIZE=4 MASTER_ADDR=127.0.0.1 MASTER_PORT=1)
  expect_failure 2 "--pipeline-stages 3 does not divide WORLD_SIZE=4 \(WORLD_SIZE = stages x data-parallel replicas; accepted: a divisor of 4\)" \
    "${env4[@]}" -- train "${small[@]}" --pipeline-stages 3 --out "$work/e"
  expect_failure 2 "--pipeline-stages 4 for 2 blocks \(accepted: 1 to 2: each stage runs at least one block\)" \
    "${env4[@]}" -- train "${small[@]}" --pipeline-stages 4 --out "$work/e"
  expect_failure 2 "--pipeline-stages 2 does not divide WORLD_SIZE=1" -- train "${small[@]}" --pipeline-stages 2 --out "$work/e"
  expect_failure 2 "--batch 7 does not split over 2 data-parallel replicas \(WORLD_SIZE=4 / --pipeline-stages 2\)" \
    "${env4[@]}" -- train "${small[@]}" --pipeline-stages 2 --batch 7 --out "$work/e"
  expect_failure 2 "--schedule 'dualpipe' \(accepted: 1f1b, gpipe\)" -- train "${small[@]}" --schedule dualpipe --out "$work/e"
  expect_failure 2 "--pipe-dtype 'float16' \(accepted: auto, float32, bfloat16\)" -- train "${small[@]}" --pipe-dtype float16 --out "$work/e"
  expect_failure 2 "mhc compare runs in one process: --pipeline-stages 2 \(accepted: 1\)" -- compare "${small[@]}" --pipeline-stages 2 --out "$work/e"
  expect_error "--pipeline-stages 5 for 4 blocks \(accepted: 1 to 4" bench pipeline --preset tiny --stages 5
  expect_error "--stages must be" bench pipeline --stages 1
fi

echo "pipeline_cli ($only): $failures failed"
[ "$failures" -eq 0 ]
