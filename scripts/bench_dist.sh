#!/usr/bin/env bash
# Data-parallel scaling of `mhc train` on this machine, as a Markdown section of docs/benchmarks.md
# (scripts/benchmarks.sh includes it): global tokens/s of 2 ranks x 1 thread (mhc launch, c10d
# Gloo on loopback) against 1 rank x 1 thread at the same per-rank batch; for context, two
# independent 1-thread trainings side by side (what the machine gives two processes with no
# communication at all) and 1 rank x 2 threads. The configurations run in turn, twice, so that
# the host's drift hits all alike; each figure is a median over the steps after the fifth.
# Usage: scripts/bench_dist.sh [path/to/mhc] [steps]
set -euo pipefail
mhc=${1:-build/mhc}
steps=${2:-40}
python=${MHC_PYTHON:-$(dirname "$0")/../.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
common=(--steps "$steps" --eval-every 0 --eval-batches 1 --ckpt-every 0 --sample-tokens 0 --diag-every 0 --batch 16)

for k in 1 2; do
  "$mhc" train "${common[@]}" --threads 1 --out "$work/one-$k" > /dev/null
  "$mhc" launch --nproc 2 -- train "${common[@]}" --batch 32 --threads 1 --out "$work/two-$k" > /dev/null
  "$mhc" train "${common[@]}" --threads 1 --out "$work/pair-a-$k" > /dev/null &
  "$mhc" train "${common[@]}" --threads 1 --out "$work/pair-b-$k" > /dev/null
  wait
  "$mhc" train "${common[@]}" --threads 2 --out "$work/threads-$k" > /dev/null
done

median() {  # median KEY RUN_DIR…: over the steps after the fifth of all those runs
  "$python" - "$@" <<'PY'
import json, statistics, sys
key = sys.argv[1]
print("%.0f" % statistics.median(json.loads(l)[key] for d in sys.argv[2:] for l in list(open(d + "/metrics.jsonl"))[5:]))
PY
}
one=$(median tokens_per_s "$work"/one-*)
two=$(median tokens_per_s "$work"/two-*)
pair=$(( $(median tokens_per_s "$work"/pair-a-*) + $(median tokens_per_s "$work"/pair-b-*) ))
threads=$(median tokens_per_s "$work"/threads-*)
two_step=$(median step_ms "$work"/two-*)
all_reduce=$(median all_reduce_ms "$work"/two-*)
of() { "$python" -c "import sys; print('%.2f' % (float(sys.argv[1]) / float(sys.argv[2])))" "$1" "$2"; }

cat <<SECTION

## Data-parallel scaling (c10d Gloo on loopback)

\`bash scripts/bench_dist.sh $(basename "$mhc") $steps\`

\`mhc train\`, tiny preset (mHC n = 4, 4 blocks, C = 128, 2.0M parameters), 16 windows x 128
tokens per rank per step, $steps steps per run, every configuration run twice in turn; medians over
the steps after the fifth. Scaling efficiency = tokens/s of 2 ranks / (2 x tokens/s of 1 rank).
Machine: $(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores.

| configuration | tokens/s | vs 1 rank x 1 thread |
|---|---|---|
| 1 rank x 1 thread | $one | 1.00x |
| 2 ranks x 1 thread (\`mhc launch --nproc 2\`, global batch 32) | $two | $(of "$two" "$one")x: scaling efficiency $("$python" -c "print('%.0f%%' % (50 * $two / $one))") |
| two independent 1-thread runs side by side (no communication; sum) | $pair | $(of "$pair" "$one")x |
| 1 rank x 2 threads | $threads | $(of "$threads" "$one")x |

The gradient all-reduce (2.0M fp32 values, one flattened bucket) takes a median $all_reduce ms of a
$two_step ms step with 2 ranks. The side-by-side row is this machine's own ceiling for two
processes — its two vCPUs do not give two cores' worth of training throughput even without
communication — so 2 ranks reach $(of "$two" "$pair") of what two processes can do here at all. The rest of
the gap is not in the all-reduce; most likely it is the lockstep: every step lasts as long as the
slower rank's, on a host whose step times swing by tens of percent.
SECTION
