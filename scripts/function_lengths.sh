#!/usr/bin/env bash
# Lists the functions longer than a limit (default 80 lines) in the C++ sources outside the tests,
# longest first, as "LINES FILE FUNCTION", from universal-ctags' start and end lines (scripts/setup.sh
# installs it). A lambda is counted in the function that holds it; the CUDA kernels are left out
# (one kernel is one launch, by design).
#   bash scripts/function_lengths.sh [LIMIT]
set -euo pipefail
limit=${1:-80}
cd "$(dirname "$0")/.."
ctags-universal --languages=C++ --langmap=C++:+.cu --kinds-C++=f --fields=+ne -o - -R src include |
  awk -F'\t' -v limit="$limit" '
    $1 ~ /^__anon/ || $2 ~ /\/cuda\// { next }
    { line = ""; end = ""
      for (i = 4; i <= NF; i++) { if ($i ~ /^line:/) line = substr($i, 6); if ($i ~ /^end:/) end = substr($i, 5) }
      if (line != "" && end != "" && end - line + 1 > limit) print end - line + 1, $2, $1 }' |
  sort -rn
