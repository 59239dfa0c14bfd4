#!/usr/bin/env bash
# Regenerates docs/stability/, the data of docs/stability.md (the stability experiment of DESIGN.md
# §5): `mhc compare --preset deep` (24 blocks = 48 sublayers, C = 64, 300 steps; every variant) into
# runs/stability — finished runs are reused, so re-running only redraws — then `mhc analyze` of the
# hyper-connection runs, and copies the report, tables and plots. About 20 minutes on 2 cores.
# Usage: scripts/stability.sh [path/to/mhc]
set -euo pipefail
cd "$(dirname "$0")/.."
mhc=${1:-build/mhc}
out=runs/stability
docs=docs/stability

"$mhc" compare --preset deep --out "$out"
mkdir -p "$docs"
cp "$out/report.md" "$out"/*.png "$docs/"
# Each variant's table; the plots that say something (HC's drift, mHC's Sinkhorn error, the mean maps).
for variant in hc mhc mhc-lite; do
  "$mhc" analyze --ckpt "$out/$variant" --out "$out/analysis-$variant" > "$docs/analyze-$variant.txt"
done
cp "$out/analysis-hc/gain_vs_depth.png" "$docs/analyze-hc-gain_vs_depth.png"
cp "$out/analysis-hc/h_res_mean.png" "$docs/analyze-hc-h_res_mean.png"
cp "$out/analysis-mhc/gain_vs_depth.png" "$docs/analyze-mhc-gain_vs_depth.png"
cp "$out/analysis-mhc/h_res_mean.png" "$docs/analyze-mhc-h_res_mean.png"
cp "$out/analysis-mhc/sinkhorn_error.png" "$docs/analyze-mhc-sinkhorn_error.png"
echo "stability: wrote $docs/"
