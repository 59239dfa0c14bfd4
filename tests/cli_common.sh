# What the end-to-end CLI scripts (train_cli.sh, dist_cli.sh) share; sourced, with their arguments
# BUILD/mhc SOURCE_DIR [section]: a scratch folder removed on exit (with any background job), failure
# counting, section selection, one-line error checks, and a small corpus — 2000 distinct lines in
# 200 documents.
set -u
mhc=$1
src=$2
only=${3:-all}
python=${MHC_PYTHON:-$src/.venv/bin/python}  # the project environment's (ctest passes the configured one)
work=$(mktemp -d)
trap 'kill -9 $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
want() { [ "$only" = all ] || [ "$only" = "$1" ]; }

for i in $(seq 1 2000); do
  echo "line $i: the quick brown fox jumps over the lazy dog $((i * 7 % 13)) times"
  [ $((i % 10)) -eq 0 ] && echo
done > "$work/text.txt"

# expect_failure STATUS REGEX [VAR=VALUE …] -- ARGS…: `mhc ARGS…` in that environment exits with
# STATUS and writes exactly one line to stderr, matching "error: REGEX".
expect_failure() {
  local want_status=$1 pattern=$2 err status environment=()
  shift 2
  while [ "$1" != "--" ]; do environment+=("$1"); shift; done
  shift
  err=$(env "${environment[@]}" "$mhc" "$@" 2>&1 >/dev/null)
  status=$?
  if [ "$status" -ne "$want_status" ] || [ "$(printf '%s\n' "$err" | wc -l)" -ne 1 ] || ! printf '%s' "$err" | grep -Eq "^error: $pattern"; then
    fail "${environment[*]} mhc $* -> status $status, stderr: $err"
  fi
}
expect_error() { local pattern=$1; shift; expect_failure 2 "$pattern" -- "$@"; }  # bad input: status 2
