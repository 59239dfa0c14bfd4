#!/usr/bin/env bash
# The whole GPU check, for a lent H100 / H200 as it comes (a python3 with a CUDA torch, nvcc, cmake,
# ninja, compute-sanitizer; no package registry): builds mhc with its CUDA ops against that torch,
# then runs, each stage under its own time limit and all within one budget (default 470 s):
#   build      cmake (-DMHC_PYTHON=that python, TORCH_CUDA_ARCH_LIST=9.0) and ninja; the C++ packages
#              of scripts/setup.sh come from .gpu-deps/*.deb when the machine lacks them
#              (scripts/gpu_deps.sh fetches them; carry .gpu-deps), else an ops-only build
#   ctest      the suite's CUDA cases (ctest -R 'CUDA|DoublyStochastic|cuda')
#   sanitizer  the standalone kernel test under compute-sanitizer memcheck
#   pytest     python/tests/test_cuda.py, and opcheck and torch.compile on CUDA (--device cuda)
#   train      20 bf16 steps of `mhc train --preset small --device cuda` against the CPU's fp32 run
#              of the same settings: every step's loss within 2^-8 relative (train.json)
#   hf         python/tests/test_hf_deepseek_v4.py --device cuda (the patched HF DeepSeek-V4 model)
#   bench      docs/cuda.md's speed tables (bench.md, bench.json)
# A stage that cannot run (no GPU, no compute-sanitizer, no transformers, no build) says why in one
# line and the rest go on; the end is a table of the stages, ran / skipped / failed and seconds.
# OUT_DIR gets gpu_check.log (every stage's output), summary.json, train.json, bench.md, bench.json.
#   bash scripts/gpu_check.sh OUT_DIR
#   MHC_BUILD_DIR=build bash scripts/gpu_check.sh OUT_DIR   (use that build as it is: no configure, no
#                                                          build; without a GPU nothing is built anyway)
#   PYTHON=…  the Python with torch (default: the first of python3, /opt/torch/.venv/bin/python3,
#             .venv/bin/python that imports torch);  MHC_GPU_CHECK_BUDGET=seconds (default 470)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

# --- one stage, run by the driver below as `gpu_check.sh --stage NAME` under `timeout` -------------
# Exit 0: ran and passed; 77: skipped, the last line saying why; anything else: failed.
skip() { echo "skipped: $*"; exit 77; }
# need_gpu [COUNT_COMMAND…]: without a GPU, skip, saying how many cases the command counts (a dry run
# of the stage's selection).
need_gpu() {
  [ -z "$gpu" ] || return 0
  local would=""
  [ $# -eq 0 ] || would="; dry run: $("$@" 2>&1 | tail -1)"
  skip "no CUDA GPU usable here (torch.cuda.is_available() is false)$would"
}
pytest_on() { MHC_LIBRARY=$(cat "$work/build_dir")/libmhc.so PYTHONPATH=$root/python "$python" -m pytest -q -p no:cacheprovider "$@"; }
need_build() { [ -f "$(cat "$work/build_dir" 2>/dev/null)/libmhc.so" ] || skip "no build of libmhc (the build stage did not make one)"; }
# The carried packages' libraries, for what they load at run time beyond the binaries' own run-time
# paths (SentencePiece's protobuf).
deps_libraries() {
  local d=$root/build-gpu/deps/usr/lib/x86_64-linux-gnu
  [ ! -d "$d" ] || export LD_LIBRARY_PATH=$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
}
need_tool() { need_build; [ -x "$(cat "$work/build_dir")/mhc" ] || skip "the build has no \`mhc\` tool (an ops-only build: $(cat "$work/build_note" 2>/dev/null))"; }

stage_build() {
  if [ -n "${MHC_BUILD_DIR:-}" ]; then
    [ -f "$MHC_BUILD_DIR/libmhc.so" ] || { echo "MHC_BUILD_DIR=$MHC_BUILD_DIR holds no libmhc.so"; exit 1; }
    (cd "$MHC_BUILD_DIR" && pwd) > "$work/build_dir"
    skip "MHC_BUILD_DIR=$MHC_BUILD_DIR is used as it is (no configure, no build)"
  fi
  need_gpu
  local b=$root/build-gpu deps=() full_note
  # The C++ packages the tool and the C++ tests need, from Debian 12's .debs unpacked into the build
  # folder (the binaries' run-time paths point there): CMake's packages by prefix, SentencePiece by
  # pkg-config (pkgconf comes along), Gloo's and OpenSSL's headers by -isystem.
  if ! compgen -G "$root/.gpu-deps/*.deb" > /dev/null; then
    echo "C++ packages: none carried (.gpu-deps/*.deb), those of this machine"
  elif ! command -v dpkg-deb > /dev/null; then
    echo "C++ packages: no dpkg-deb here to unpack .gpu-deps/*.deb; those of this machine"
  else
    local sys=$b/deps lib
    mkdir -p "$sys"
    for deb in "$root"/.gpu-deps/*.deb; do dpkg-deb -x "$deb" "$sys"; done
    lib=$sys/usr/lib/x86_64-linux-gnu
    printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s/usr/bin/pkgconf "$@"\n' "$lib" "$sys" > "$sys/pkg-config"
    chmod +x "$sys/pkg-config"
    export PKG_CONFIG_LIBDIR=$lib/pkgconfig:$sys/usr/share/pkgconfig PKG_CONFIG_SYSROOT_DIR=$sys
    deps=(-DCMAKE_PREFIX_PATH="$sys/usr" -DOPENSSL_ROOT_DIR="$sys/usr" -DPKG_CONFIG_EXECUTABLE="$sys/pkg-config"
          -DCMAKE_CXX_FLAGS="-isystem $sys/usr/include -isystem $sys/usr/include/x86_64-linux-gnu")
    echo "C++ packages: $(find "$root/.gpu-deps" -name "*.deb" | wc -l) .debs from .gpu-deps unpacked into $sys"
  fi
  export TORCH_CUDA_ARCH_LIST=9.0
  local common=(-G Ninja -DCMAKE_BUILD_TYPE=Release -DMHC_CUDA=on -DMHC_CUDA_ARCH=90 -DMHC_PYTHON="$python")
  local targets=(mhc mhc_launcher cuda_kernels mhc_tests)
  if cmake -S "$root" -B "$b" "${common[@]}" "${deps[@]}" > "$work/cmake.log" 2>&1; then
    cat "$work/cmake.log"
  else
    # Without the tool's packages: the ops and the kernel test alone (the train stage then skips).
    cat "$work/cmake.log"
    full_note=$(grep -m1 -A2 "CMake Error" "$work/cmake.log" | tr -s ' \n' ' ' | cut -c1-200)
    echo "the full configure failed ($full_note); building the ops only"
    echo "full configure failed: $full_note" > "$work/build_note"
    b=$b-ops targets=(mhc cuda_kernels)
    cmake -S "$root" -B "$b" "${common[@]}" -DMHC_OPS_ONLY=ON > "$work/cmake.log" 2>&1 || { cat "$work/cmake.log"; exit 1; }
    cat "$work/cmake.log"
  fi
  grep -q "^-- CUDA ops: linked" "$work/cmake.log" || { echo "the CUDA ops are not linked into libmhc"; exit 1; }
  echo "$b" > "$work/build_dir"
  # -k 0: what builds is there for the later stages even where one target fails.
  ninja -C "$b" -k 0 "${targets[@]}"
}

stage_ctest() {
  need_build; deps_libraries
  # cuda.torch_wheel would make a venv from PyPI; the train stage does cli.train_cuda's comparison.
  local select=(--test-dir "$(cat "$work/build_dir")" -R 'CUDA|DoublyStochastic|cuda' -E 'cuda\.torch_wheel|cli\.train_cuda')
  need_gpu ctest "${select[@]}" -N
  ctest "${select[@]}" --output-on-failure -j 8 --timeout 120
}

stage_sanitizer() {
  need_gpu; need_build
  local sanitizer
  sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  [ -x "$sanitizer" ] || skip "no compute-sanitizer on PATH or in /usr/local/cuda/bin"
  "$sanitizer" --tool memcheck --error-exitcode 1 "$(cat "$work/build_dir")/tests/cuda_kernels"
}

stage_pytest() {
  need_build
  local tests=("$root/python/tests/test_cuda.py" "$root/python/tests/test_opcheck.py" "$root/python/tests/test_compile.py")
  need_gpu pytest_on --collect-only --device cuda "${tests[@]}"
  pytest_on -rs --device cuda "${tests[@]}"
}

stage_train() {
  need_gpu; need_tool; deps_libraries
  local mhc
  mhc=$(cat "$work/build_dir")/mhc
  # The corpus of tests/cli_common.sh: 2000 distinct lines in 200 documents, byte tokens.
  for i in $(seq 1 2000); do
    echo "line $i: the quick brown fox jumps over the lazy dog $((i * 7 % 13)) times"
    [ $((i % 10)) -eq 0 ] && echo
  done > "$work/text.txt"
  local settings=(--preset small --data "$work/text.txt" --data-dir "$work/data" --tokenizer byte --stop-after 20
                  --eval-every 0 --diag-every 0 --sample-tokens 0 --threads "$(nproc)")
  "$mhc" train "${settings[@]}" --out "$work/cpu-fp32"
  "$mhc" train "${settings[@]}" --device cuda --dtype bfloat16 --out "$work/cuda-bf16"
  "$python" - "$work/cpu-fp32/metrics.jsonl" "$work/cuda-bf16/metrics.jsonl" "$out/train.json" "${settings[*]}" <<'PY'
import json, sys
cpu, cuda = ([json.loads(line)["loss"] for line in open(f)] for f in sys.argv[1:3])
# bf16's unit roundoff, relative: no worse than rounding the fp32 loss itself to bf16 once.
bound = 2.0 ** -8
gaps = [abs(b - a) / a for a, b in zip(cpu, cuda)]
worst = max(gaps) if gaps else float("nan")
ok = len(cpu) == len(cuda) == 20 and worst <= bound
json.dump({"settings": sys.argv[4], "cpu_fp32": cpu, "cuda_bf16": cuda, "relative_gaps": gaps,
           "worst_relative_gap": worst, "bound": bound, "pass": ok}, open(sys.argv[3], "w"), indent=1)
print(f"cuda bf16 vs cpu fp32 over {len(cuda)} steps (want 20 each): worst relative loss gap {worst:.2e}, bound 2^-8 = {bound:.2e}")
sys.exit(0 if ok else 1)
PY
}

stage_hf() {
  local test=$root/python/tests/test_hf_deepseek_v4.py
  [ -f "$test" ] || skip "python/tests/test_hf_deepseek_v4.py is not in this tree"
  "$python" -c "import transformers" 2> /dev/null || skip "transformers is not installed for $python"
  need_build
  need_gpu pytest_on --collect-only --device cuda "$test"
  pytest_on -rs --device cuda "$test"
}

stage_bench() {
  need_gpu; need_build
  local b
  b=$(cat "$work/build_dir")
  {
    echo "# docs/cuda.md's speed tables on $gpu ($(date -u +%F))"
    if [ -x "$b/mhc" ]; then
      echo; echo "## mhc bench layer --device cuda --dtype bfloat16 --tokens 16384 --streams 4 --dim 1280,4096"; echo
      "$b/mhc" bench layer --device cuda --dtype bfloat16 --tokens 16384 --streams 4 --dim 1280,4096 --markdown
    else
      echo; echo "(no mhc bench layer: $(cat "$work/build_note"))"
    fi
    echo; echo "## python/bench.py --device cuda --dtype bfloat16 --tokens 16384 --dim 1280,4096"; echo
    MHC_LIBRARY=$b/libmhc.so PYTHONPATH=$root/python "$python" "$root/python/bench.py" --device cuda --dtype bfloat16 \
      --tokens 16384 --dim 1280,4096 --variant residual,hc,mhc,mhc-lite --markdown
    echo; echo "## cuda_kernels --bench (N = 16384, n = 4, bf16)"; echo
    "$b/tests/cuda_kernels" --bench
  } | tee "$out/bench.md"
  if [ -x "$b/mhc" ]; then
    "$b/mhc" bench layer --device cuda --dtype bfloat16 --tokens 16384 --streams 4 --dim 1280,4096 --json > "$out/bench.json"
  fi
}

if [ "${1:-}" = --stage ]; then
  "stage_$2"
  exit 0
fi

# --- the driver ------------------------------------------------------------------------------------
[ $# -eq 1 ] || { echo "usage: bash scripts/gpu_check.sh OUT_DIR" >&2; exit 2; }
mkdir -p "$1"
out=$(cd "$1" && pwd)
budget=${MHC_GPU_CHECK_BUDGET:-470}
candidates=(python3 /opt/torch/.venv/bin/python3 "$root/.venv/bin/python")
[ -z "${PYTHON:-}" ] || candidates=("$PYTHON")
python=""
for candidate in "${candidates[@]}"; do
  if command -v "$candidate" > /dev/null && "$candidate" -c "import torch" 2> /dev/null; then
    python=$(command -v "$candidate"); break
  fi
done
[ -n "$python" ] || { echo "gpu_check: no Python with torch among ${candidates[*]}" >&2; exit 1; }
gpu=$("$python" -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else '')")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export root out python gpu work
: > "$out/gpu_check.log"
rm -f "$out/train.json" "$out/bench.md" "$out/bench.json"

environment=$("$python" - <<'PY'
import json, os, shutil, subprocess, sys, torch
def version(cmd, line):
    """A line of `cmd --version`, or None where cmd is missing."""
    if not shutil.which(cmd):
        return None
    return subprocess.run([cmd, "--version"], capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[line]
try:
    import transformers
    hf = transformers.__version__
except ImportError:
    hf = None
print(json.dumps({"python": sys.executable, "torch": torch.__version__, "torch_cuda": torch.version.cuda,
                  "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                  "nvcc": version("nvcc", -1), "cmake": version("cmake", 0), "ninja": version("ninja", 0),
                  "compute_sanitizer": shutil.which("compute-sanitizer"), "transformers": hf, "cores": os.cpu_count()}))
PY
)
echo "gpu_check: $environment" | tee -a "$out/gpu_check.log"
echo "gpu_check: budget ${budget}s; logs in $out/gpu_check.log"

names=() statuses=() seconds=() notes=()
: > "$work/stages.tsv"
start=$SECONDS
run_stage() {  # run_stage NAME CAP_SECONDS
  local name=$1 cap=$2 left limit t0 rc status note
  left=$((budget - (SECONDS - start)))
  t0=$SECONDS
  if [ "$left" -lt 15 ]; then
    status=skipped note="out of the ${budget}s budget (${left}s left)"
    echo "[$name] skipped: $note"
  else
    limit=$((cap < left ? cap : left))
    printf '\n===== %s (limit %ss) =====\n' "$name" "$limit" >> "$out/gpu_check.log"
    set +e
    timeout --kill-after=10 "$limit" bash "$0" --stage "$name" > "$work/$name.log" 2>&1
    rc=$?
    set -e
    cat "$work/$name.log" >> "$out/gpu_check.log"
    case $rc in
      0) status=ran note=$(grep -v '^\s*$' "$work/$name.log" | tail -1 | cut -c1-160) ;;
      77) status=skipped note=$(grep '^skipped: ' "$work/$name.log" | tail -1); note=${note#skipped: } ;;
      124|137) status=failed note="timed out after ${limit}s" ;;
      *) status=failed note="exit status $rc" ;;
    esac
    echo "[$name] $status in $((SECONDS - t0))s: $note"
    if [ "$status" = failed ]; then sed 's/^/    /' "$work/$name.log" | tail -15; fi
  fi
  names+=("$name") statuses+=("$status") seconds+=("$((SECONDS - t0))") notes+=("$note")
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - t0))" "${note//$'\t'/ }" >> "$work/stages.tsv"
}

run_stage build 270
run_stage ctest 60
run_stage sanitizer 60
run_stage pytest 120
run_stage train 60
run_stage hf 60
run_stage bench 60

echo
printf '%-10s %-8s %7s  %s\n' stage status seconds note
for i in "${!names[@]}"; do
  printf '%-10s %-8s %7s  %s\n' "${names[$i]}" "${statuses[$i]}" "${seconds[$i]}" "${notes[$i]}"
done
printf '%-10s %-8s %7s\n' total "" "$((SECONDS - start))"
"$python" - "$environment" "$budget" "$work/stages.tsv" "$out/summary.json" <<'PY'
import json, sys
environment, budget, tsv, summary = sys.argv[1:5]
stages = [dict(zip(("stage", "status", "seconds", "note"), line.rstrip("\n").split("\t"))) for line in open(tsv)]
for s in stages:
    s["seconds"] = int(s["seconds"])
json.dump({"environment": json.loads(environment), "budget_s": int(budget), "stages": stages}, open(summary, "w"), indent=1)
PY
for s in "${statuses[@]}"; do [ "$s" != failed ] || exit 1; done
