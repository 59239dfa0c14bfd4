#!/usr/bin/env bash
# Regenerates docs/stability/, the data of docs/stability.md (the stability experiment of DESIGN.md
# §5, issue 21), into runs/stability:
#   seeds/      `mhc compare --preset deep --seeds 3`: every variant (KromHC at n = 4 = 2⊗2, identity-HC
#               as the no-mixing ablation, the orthogonal jpmhc and the orthostochastic gomhc),
#               24 blocks = 48 sublayers, C = 64,
#               300 steps, seeds 1337-1339; the report gives each number's mean and spread
#   depth-12/, depth-48/   the hyper-connection variants at 12 and 48 blocks of the same width, one seed
#               (1337); the 24-block point is the seeds study's
#   depth.png   the largest final composite gain vs depth, per variant, on one log axis
#   analysis-*/ `mhc analyze` of each hyper-connection variant's seed-1337 run at 24 blocks
# Finished runs are reused and interrupted ones resumed, so re-running only redraws. Estimated from
# the single-seed study (13.5 minutes for 4 variants at 24 blocks on 2 cores): ~40 minutes for the
# seeds, ~6 and ~25 minutes for 12 and 48 blocks (step time grows with depth), ~70 minutes in all;
# KromHC and identity-HC add ~30, jpmhc and gomhc ~25 more (each deep run: ~1.8 minutes alone).
# Usage: scripts/stability.sh [path/to/mhc]
# Environment, for a quick rehearsal on a small setting: STABILITY_FLAGS (flags added to every
# compare, e.g. "--steps 4 --dim 16"), STABILITY_OUT (default runs/stability), STABILITY_DOCS
# (default docs/stability), STABILITY_DEPTHS (default "12 48").
set -euo pipefail
cd "$(dirname "$0")/.."
mhc=${1:-build/mhc}
out=${STABILITY_OUT:-runs/stability}
docs=${STABILITY_DOCS:-docs/stability}
read -r -a flags <<< "${STABILITY_FLAGS:-}"
read -r -a depths <<< "${STABILITY_DEPTHS:-12 48}"
variants=residual,hc,mhc,mhc-lite,kromhc,ihc,jpmhc,gomhc
# The variants with a learned H_res; the gain of the plain residual and of identity-HC is 1 at every depth.
hyper=(hc mhc mhc-lite kromhc jpmhc gomhc)
seeds=3
first_seed=1337

"$mhc" compare --preset deep --variant "$variants" --seeds "$seeds" --seed "$first_seed" "${flags[@]}" --out "$out/seeds"
depth_runs=()
for variant in "${hyper[@]}"; do
  for k in $(seq 0 $((seeds - 1))); do depth_runs+=("$variant-seed$((first_seed + k))=$out/seeds/$variant-seed$((first_seed + k))"); done
done
for blocks in "${depths[@]}"; do
  "$mhc" compare --preset deep --layers "$blocks" --variant "$(IFS=,; echo "${hyper[*]}")" --seed "$first_seed" \
    "${flags[@]}" --out "$out/depth-$blocks"
  for variant in "${hyper[@]}"; do depth_runs+=("$variant=$out/depth-$blocks/$variant"); done
done
"${MHC_PYTHON:-.venv/bin/python}" scripts/plots.py --log-keys "$("$mhc" train --print-log-keys)" depth "$out/depth.png" \
  "${depth_runs[@]}"

mkdir -p "$docs"
cp "$out/seeds/report.md" "$out/seeds"/*.png "$out/depth.png" "$docs/"
for blocks in "${depths[@]}"; do cp "$out/depth-$blocks/report.md" "$docs/report-depth-$blocks.md"; done
# Each variant's tables; the plots that say something (HC's drift, mHC's Sinkhorn error, the mean
# maps, the streams).
for variant in "${hyper[@]}"; do
  "$mhc" analyze --ckpt "$out/seeds/$variant-seed$first_seed" --out "$out/analysis-$variant" > "$docs/analyze-$variant.txt"
  cp "$out/analysis-$variant/streams.png" "$docs/analyze-$variant-streams.png"
done
cp "$out/analysis-hc/gain_vs_depth.png" "$docs/analyze-hc-gain_vs_depth.png"
cp "$out/analysis-hc/h_res_mean.png" "$docs/analyze-hc-h_res_mean.png"
cp "$out/analysis-mhc/gain_vs_depth.png" "$docs/analyze-mhc-gain_vs_depth.png"
cp "$out/analysis-mhc/h_res_mean.png" "$docs/analyze-mhc-h_res_mean.png"
cp "$out/analysis-mhc/sinkhorn_error.png" "$docs/analyze-mhc-sinkhorn_error.png"
echo "stability: wrote $docs/"
