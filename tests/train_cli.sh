#!/usr/bin/env bash
# `mhc train`, `sample` and `eval` end to end on a small byte-level model: every variant trains,
# two runs and a resume are bit-exact, SIGKILL during checkpointing never leaves `latest` unreadable, SIGTERM saves
# and exits cleanly, damaged checkpoints are refused, a non-finite run stops, the checkpoint is
# standard safetensors (read by Python with NumPy only), diagnostics leave training unchanged,
# `analyze` and `compare` write their tables and valid plots, and bad input gets one-line errors.
# Usage: train_cli.sh BUILD/mhc SOURCE_DIR [section]   (section: variants resume kill signals damage
# nonfinite diag compare precision errors, and cuda, which runs only when named; default: all)
source "$(dirname "$0")/cli_common.sh"

small=(--data "$work/text.txt" --data-dir "$work/data" --tokenizer byte --dim 32 --layers 2 --heads 2 --seq-len 32
       --batch 4 --threads 2 --eval-every 10 --eval-batches 2 --sample-tokens 0 --warmup 5 --out "$work/default-out")

pngs_valid() { "$python" "$src/tests/check_png.py" "$@"; }
losses() { "$python" -c 'import json,sys; print(" ".join(repr(json.loads(l)["loss"]) for l in open(sys.argv[1])))' "$1"; }

if want variants; then
  for v in "residual" "hc --streams 2" "mhc --streams 4 --sinkhorn-iters 5" "mhc-lite --streams 3" "kromhc --streams 8" \
           "ihc --streams 4" "jpmhc --streams 4 --cayley-iters 2" "gomhc --streams 16 --block-size 1"; do
    out="$work/variant-${v%% *}"
    # shellcheck disable=SC2086
    if ! "$mhc" train "${small[@]}" --steps 12 --variant $v --out "$out" > "$out.log" 2>&1; then
      fail "variant $v: $(tail -1 "$out.log")"; continue
    fi
    grep -q "^done: step 12, validation loss" "$out.log" || fail "variant $v: no final validation line"
    [ "$(wc -l < "$out/metrics.jsonl")" -eq 12 ] || fail "variant $v: metrics.jsonl has $(wc -l < "$out/metrics.jsonl") lines, want 12"
  done
  "$mhc" sample --ckpt "$work/variant-mhc" --prompt "line 5" --tokens 20 --seed 3 > "$work/sample.txt" 2>&1 &&
    grep -q "^line 5" "$work/sample.txt" || fail "sample: $(cat "$work/sample.txt")"
  # The KV cache against the uncached path past the context (32 tokens), three sequences at once.
  for cache in "" --no-cache; do
    # shellcheck disable=SC2086
    "$mhc" sample --ckpt "$work/variant-mhc" --prompt "line 5" --tokens 70 --temperature 0 --batch 3 $cache \
      > "$work/sample$cache.txt" 2> "$work/sample$cache.err" || fail "sample $cache: $(cat "$work/sample$cache.err")"
  done
  cmp -s "$work/sample.txt" "$work/sample--no-cache.txt" || fail "sample: the cached and uncached texts differ"
  # One sequence streams its text token by token: the same text as the batch's.
  "$mhc" sample --ckpt "$work/variant-mhc" --prompt "line 5" --tokens 70 --temperature 0 > "$work/streamed.txt" 2> /dev/null
  [ "$(head -c "$(wc -c < "$work/streamed.txt")" "$work/sample.txt")" = "$(cat "$work/streamed.txt")" ] ||
    fail "sample: the streamed text differs from the batch's: $(cat "$work/streamed.txt")"
  grep -q "^sample: 210 tokens in .* tokens/s, KV cache, batch 3)" "$work/sample.err" || fail "sample: $(cat "$work/sample.err")"
  expect_error "prompt 0 is empty \(accepted: at least one token\)" sample --ckpt "$work/variant-mhc" --prompt ""
  expect_error "prompt 0 has 40 tokens, more than the model's context of 32 \(accepted: 1 to 32 tokens\)" \
    sample --ckpt "$work/variant-mhc" --prompt "$(printf '%040d' 0)"
  for bad in "--tokens -1" "--tokens 2000000" "--top-k -1" "--temperature 101" "--temperature nan" "--batch 0"; do
    # shellcheck disable=SC2086
    expect_error "${bad%% *} must be a (whole )?number in \[" sample --ckpt "$work/variant-mhc" $bad
  done
  expect_error "cannot read --prompt-file $work/no-prompts.txt: No such file" sample --ckpt "$work/variant-mhc" --prompt-file "$work/no-prompts.txt"
  "$mhc" eval --ckpt "$work/variant-mhc" > "$work/eval.txt" 2>&1 &&
    grep -Eq "^step 12: validation loss [0-9.]+ nats, perplexity [0-9.]+" "$work/eval.txt" || fail "eval: $(cat "$work/eval.txt")"
fi

if want resume; then
  # 40 steps straight vs 20 steps, then resume to 40: the same losses at every step, bit for bit.
  "$mhc" train "${small[@]}" --steps 40 --out "$work/straight" > /dev/null 2>&1 || fail "straight run failed"
  "$mhc" train "${small[@]}" --steps 40 --stop-after 20 --out "$work/split" > /dev/null 2>&1 || fail "first half failed"
  "$mhc" train --resume "$work/split" --stop-after 0 > "$work/resume.log" 2>&1 || fail "resume failed: $(tail -1 "$work/resume.log")"
  a=$(losses "$work/straight/metrics.jsonl") b=$(losses "$work/split/metrics.jsonl")
  [ -n "$a" ] && [ "$a" = "$b" ] || fail "resume is not exact: straight [$a] vs split [$b]"
  # The same 40 steps again, at the same thread count: bit-identical (every kernel, the fused
  # boundaries' included, sums in a fixed order for a given thread count).
  "$mhc" train "${small[@]}" --steps 40 --out "$work/straight-again" > /dev/null 2>&1 || fail "second straight run failed"
  c=$(losses "$work/straight-again/metrics.jsonl")
  [ "$a" = "$c" ] || fail "two runs of 40 steps differ: [$a] vs [$c]"
  [ "$(echo "$a" | wc -w)" -eq 40 ] || fail "straight run logged $(echo "$a" | wc -w) steps, want 40"
  # Recomputation is a run setting: started with none, resumed with streams, or blocks throughout,
  # the losses are the straight run's, bit for bit.
  "$mhc" train "${small[@]}" --steps 40 --stop-after 20 --out "$work/split-streams" > /dev/null 2>&1 || fail "first half (none) failed"
  "$mhc" train --resume "$work/split-streams" --recompute streams --recompute-every 2 --stop-after 0 > "$work/resume-streams.log" 2>&1 ||
    fail "resume with --recompute streams failed: $(tail -1 "$work/resume-streams.log")"
  "$mhc" train "${small[@]}" --steps 40 --recompute blocks --out "$work/blocks" > /dev/null 2>&1 || fail "--recompute blocks run failed"
  [ "$(losses "$work/split-streams/metrics.jsonl")" = "$a" ] || fail "none resumed with streams differs from the straight run"
  [ "$(losses "$work/blocks/metrics.jsonl")" = "$a" ] || fail "--recompute blocks differs from the straight run"
  # The exact variants beyond mHC-lite resume bit for bit too (KromHC at n = 8 = 2⊗2⊗2); --residual
  # is --variant's earlier spelling.
  # So does DeepSeek-V4's convention with its HyperHead.
  for v in "kromhc --streams 8" "ihc --streams 4" "mhc-v4 --streams 4 --head hyper" "jpmhc --streams 4" \
           "gomhc --streams 8"; do
    # shellcheck disable=SC2086
    "$mhc" train "${small[@]}" --steps 16 --residual $v --out "$work/straight-${v%% *}" > /dev/null 2>&1 &&
      "$mhc" train "${small[@]}" --steps 16 --stop-after 8 --residual $v --out "$work/split-${v%% *}" > /dev/null 2>&1 &&
      "$mhc" train --resume "$work/split-${v%% *}" --stop-after 0 > /dev/null 2>&1 || fail "$v: a run failed"
    [ "$(losses "$work/straight-${v%% *}/metrics.jsonl")" = "$(losses "$work/split-${v%% *}/metrics.jsonl")" ] ||
      fail "$v: resume is not exact"
  done
  # A resumed run may not change what was trained.
  err=$("$mhc" train --resume "$work/split" --variant hc --dim 64 2>&1 >/dev/null)
  echo "$err" | grep -q "^error: mhc train: --resume $work/split contradicts the checkpoint: variant (checkpoint mhc, given hc), dim (checkpoint 32, given 64)$" ||
    fail "contradicting resume: $err"
  # The checkpoint is standard safetensors: Python's standard library and NumPy read it.
  "$python" "$src/scripts/read_safetensors.py" "$work/split/latest" > "$work/py.txt" 2>&1 &&
    grep -q "^model/blocks.0.attn.qkv.weight float32 (96, 32)" "$work/py.txt" && grep -q "^sha256 ok" "$work/py.txt" ||
    fail "python reader: $(cat "$work/py.txt")"
fi

if want kill; then
  # SIGKILL at random moments of a run that checkpoints every step: `latest` must always load.
  out="$work/killed"
  for i in $(seq 1 20); do
    if [ -e "$out/latest" ]; then args=(--resume "$out"); else args=("${small[@]}" --steps 100000 --ckpt-every 1 --keep 2 --out "$out"); fi
    "$mhc" train "${args[@]}" > /dev/null 2>&1 &
    pid=$!
    sleep "$(awk -v s="$i" 'BEGIN { srand(s); printf "%.2f", 0.6 + rand() * 1.4 }')"
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    if [ -e "$out/latest" ]; then
      "$mhc" eval --ckpt "$out" --batches 1 > "$work/kill-eval.txt" 2>&1 || fail "kill $i: latest unreadable: $(cat "$work/kill-eval.txt")"
    fi
  done
  [ -e "$out/latest" ] || fail "no checkpoint was ever written in 20 runs"
  # A kill between `latest`'s update and the removal of the oldest leaves --keep + 1 (by design: old
  # checkpoints go only once `latest` points at the new one); the next checkpoint removes it.
  count() { ls "$out" | grep -c '^ckpt-.*\.safetensors$'; }
  [ "$(count)" -le 3 ] || fail "--keep 2 left $(count) checkpoints after the kills"
  last=$(ls "$out" | sed -n 's/^ckpt-0*\([0-9][0-9]*\)\.safetensors$/\1/p' | sort -n | tail -1)
  "$mhc" train --resume "$out" --stop-after $((last + 1)) > "$work/kill-last.txt" 2>&1 ||
    fail "resume after the kills: $(tail -1 "$work/kill-last.txt")"
  [ "$(count)" -le 2 ] || fail "--keep 2 left $(count) checkpoints after a finished step"
fi

if want signals; then
  for sig in TERM INT; do
    out="$work/sig-$sig"
    "$mhc" train "${small[@]}" --steps 100000 --ckpt-every 0 --out "$out" > "$out.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do grep -q "^step 3/" "$out.log" 2>/dev/null && break; sleep 0.1; done
    kill -"$sig" "$pid"
    wait "$pid"
    status=$?
    [ "$status" -eq 0 ] || fail "SIG$sig: exit status $status"
    grep -q "stopped by signal" "$out.log" || fail "SIG$sig: no stop message"
    "$mhc" eval --ckpt "$out" --batches 1 > /dev/null 2>&1 || fail "SIG$sig: its checkpoint does not load"
  done
fi

if want damage; then
  out="$work/damage"
  "$mhc" train "${small[@]}" --steps 2 --out "$out" > /dev/null 2>&1
  ckpt=$(readlink -f "$out/latest")
  cp "$ckpt" "$work/truncated.safetensors" && truncate -s -100 "$work/truncated.safetensors"
  cp "$ckpt" "$work/flipped.safetensors"
  size=$(stat -c %s "$ckpt")
  printf '\x55' | dd of="$work/flipped.safetensors" bs=1 seek=$((size - 1000)) conv=notrunc status=none
  for f in truncated flipped; do
    err=$("$mhc" eval --ckpt "$work/$f.safetensors" 2>&1 >/dev/null)
    echo "$err" | grep -Eq "^error: checkpoint .*$f.safetensors is unreadable: (checksum mismatch|tensor .* lies outside the file)" ||
      fail "$f checkpoint: $err"
  done
fi

if want nonfinite; then
  # A huge learning rate blows the weights up after the first step; the run must stop, not go on.
  out="$work/nan"
  err=$("$mhc" train "${small[@]}" --steps 50 --lr 1e20 --clip 0 --max-bad-steps 3 --out "$out" 2>&1 >/dev/null)
  status=$?
  [ "$status" -eq 1 ] || fail "non-finite run: exit status $status"
  echo "$err" | grep -q "^error: training diverged: the loss or gradient was not finite for 3 steps in a row" || fail "non-finite run: $err"
  [ "$(grep -c '"skipped":true' "$out/metrics.jsonl")" -eq 3 ] || fail "non-finite run: skipped steps not in metrics.jsonl"
fi

if want diag; then
  # Diagnostics run on the probe batch without autograd or randomness: training is unchanged.
  "$mhc" train "${small[@]}" --steps 12 --diag-every 0 --out "$work/nodiag" > "$work/nodiag.log" 2>&1 ||
    fail "diag: --diag-every 0: $(tail -1 "$work/nodiag.log")"
  "$mhc" train "${small[@]}" --steps 12 --diag-every 5 --out "$work/diag" > "$work/diag.log" 2>&1 ||
    fail "diag: --diag-every 5: $(tail -1 "$work/diag.log")"
  [ "$(losses "$work/nodiag/metrics.jsonl")" = "$(losses "$work/diag/metrics.jsonl")" ] ||
    fail "diag: the losses differ with --diag-every 5"
  diag_steps() { "$python" -c 'import json,sys; print(" ".join(str(j["step"]) for j in map(json.loads, open(sys.argv[1])) if "diag" in j))' "$1"; }
  [ "$(diag_steps "$work/diag/metrics.jsonl")" = "5 10 12" ] || fail "diag: diagnostics at steps '$(diag_steps "$work/diag/metrics.jsonl")', want '5 10 12'"
  [ -z "$(diag_steps "$work/nodiag/metrics.jsonl")" ] || fail "diag: --diag-every 0 still logged diagnostics"
  # The collapse alarm: silent with its defaults on a healthy mHC run, even diagnosing every step;
  # forced (every state has effective rank <= n = 4 < 5) it warns once, at the 3rd diagnostic in a
  # row, and still changes no loss; a resumed run continues the streak it had.
  "$mhc" train "${small[@]}" --steps 12 --diag-every 1 --out "$work/alarm-default" > "$work/alarm-default.log" 2>&1 ||
    fail "diag: default alarm run: $(tail -1 "$work/alarm-default.log")"
  ! grep -q "stream collapse" "$work/alarm-default.log" || fail "diag: the alarm fired on a default run: $(grep "stream collapse" "$work/alarm-default.log")"
  forced=(--diag-every 1 --collapse-rank 5 --collapse-after 3)
  "$mhc" train "${small[@]}" --steps 12 "${forced[@]}" --out "$work/alarm" > "$work/alarm.log" 2>&1 ||
    fail "diag: forced alarm run: $(tail -1 "$work/alarm.log")"
  [ "$(grep -c "^warning: stream collapse" "$work/alarm.log")" -eq 1 ] &&
    grep -q "^warning: stream collapse at step 3: effective rank [0-9.]* < 5 for 3 diagnostics in a row" "$work/alarm.log" ||
    fail "diag: forced alarm: $(grep -i collapse "$work/alarm.log")"
  [ "$(losses "$work/nodiag/metrics.jsonl")" = "$(losses "$work/alarm/metrics.jsonl")" ] || fail "diag: the losses differ with the alarm on"
  collapse() { "$python" -c 'import json,sys; print(" ".join("%d:%d" % (j["collapse"]["streak"], j["collapse"]["alarm"]) for j in map(json.loads, open(sys.argv[1])) if "collapse" in j))' "$1"; }
  [ "$(collapse "$work/alarm/metrics.jsonl")" = "1:0 2:0 3:1 4:1 5:1 6:1 7:1 8:1 9:1 10:1 11:1 12:1" ] ||
    fail "diag: forced alarm records: $(collapse "$work/alarm/metrics.jsonl")"
  "$mhc" train "${small[@]}" --steps 12 "${forced[@]}" --stop-after 6 --out "$work/alarm-split" > /dev/null 2>&1 &&
    "$mhc" train --resume "$work/alarm-split" --stop-after 0 > "$work/alarm-resume.log" 2>&1 || fail "diag: resumed alarm run failed"
  [ "$(collapse "$work/alarm/metrics.jsonl")" = "$(collapse "$work/alarm-split/metrics.jsonl")" ] ||
    fail "diag: a resumed run lost the streak: $(collapse "$work/alarm-split/metrics.jsonl")"
  ! grep -q "stream collapse" "$work/alarm-resume.log" || fail "diag: the resumed run warned again"

  "$mhc" analyze --ckpt "$work/diag" > "$work/analyze.txt" 2>&1 || fail "analyze: $(tail -1 "$work/analyze.txt")"
  grep -q "^mlp 1 " "$work/analyze.txt" || fail "analyze: no row for sublayer 'mlp 1' in: $(cat "$work/analyze.txt")"
  grep -q "^sublayer *share max *share min *eff rank" "$work/analyze.txt" || fail "analyze: no stream table in: $(cat "$work/analyze.txt")"
  grep -q "^streams, means over sublayers 1..L-1: effective rank .*: not collapsed" "$work/analyze.txt" ||
    fail "analyze: no collapse verdict in: $(cat "$work/analyze.txt")"
  pngs_valid "$work/diag/analysis/"{gain_vs_depth,h_res_mean,sinkhorn_error,streams}.png || fail "analyze: missing or invalid plots"
  "$python" -c '
import json, sys
a = json.load(open(sys.argv[1]))
assert a["diag"]["sublayer"] == ["attn 0", "mlp 0", "attn 1", "mlp 1"], a["diag"]["sublayer"]
assert a["sinkhorn"]["iterations"] == [1, 2, 5, 10, 20, 50] and len(a["sinkhorn"]["error"]) == 4
assert all(abs(g - 1) < 1e-4 for g in a["diag"]["composite_fwd_max"]), a["diag"]["composite_fwd_max"]
# Sublayer 0 receives n copies of the embedding: one direction, equal shares.
assert abs(a["diag"]["effective_rank"][0] - 1) < 1e-9 and abs(a["diag"]["share_max"][0] - 0.25) < 1e-9, a["diag"]
assert all(1 <= r <= 4 for r in a["diag"]["effective_rank"]) and a["stream_summary"]["collapsed"] is False, a["stream_summary"]
' "$work/diag/analysis/analysis.json" || fail "analyze: analysis.json"

  "$mhc" train "${small[@]}" --steps 3 --variant residual --out "$work/plain" > /dev/null 2>&1 || fail "diag: residual run"
  if "$mhc" analyze --ckpt "$work/plain" > "$work/analyze-plain.txt" 2>&1; then
    grep -q "the plain residual has no H_res to analyse" "$work/analyze-plain.txt" && grep -q "probe loss" "$work/analyze-plain.txt" ||
      fail "analyze (residual): $(cat "$work/analyze-plain.txt")"
  else
    fail "analyze (residual) failed: $(tail -1 "$work/analyze-plain.txt")"
  fi
  expect_error "mhc analyze: --ckpt is required \(a run folder or checkpoint file\), or --deepseek-v4 PATH" analyze
  expect_error "mhc analyze: --seed applies to --deepseek-v4 only" analyze --ckpt "$work/variant-mhc" --seed 3
  expect_error "checkpoint $work/nothing.safetensors does not exist" analyze --ckpt "$work/nothing.safetensors"
fi

if want compare; then
  cmp_args=("${small[@]}" --steps 6 --eval-every 3 --diag-every 2 --out "$work/cmp")
  if "$mhc" compare "${cmp_args[@]}" > "$work/compare.log" 2>&1; then
    # One row per variant in the main table and in the stream table; one seed calls no difference.
    [ "$(grep -cE '^\| (residual|hc|mhc|mhc-lite) \|' "$work/cmp/report.md")" -eq 8 ] || fail "compare: report rows: $(cat "$work/cmp/report.md")"
    grep -q "A \*\*loss spike\*\* is" "$work/cmp/report.md" || fail "compare: the report does not define a loss spike"
    grep -qE '^\| mhc \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| (never|from step [0-9]+) \|$' "$work/cmp/report.md" ||
      fail "compare: no stream row for mhc: $(cat "$work/cmp/report.md")"
    grep -q "with one seed there is no spread, so no difference is called" "$work/cmp/report.md" || fail "compare: one seed called differences"
    pngs_valid "$work/cmp/"{val_loss,grad_norm,gain_vs_depth,gain_over_steps,streams_vs_depth,streams_over_steps}.png ||
      fail "compare: missing or invalid plots"
    # mHC-lite's composite maps are doubly stochastic by construction: both gains 1 within 1e-4.
    "$python" -c '
import json, sys
last = [json.loads(l) for l in open(sys.argv[1])][-1]["diag"]
for key in ("composite_fwd_max", "composite_bwd_max"):
    assert all(abs(g - 1) < 1e-4 for g in last[key]), (key, last[key])
' "$work/cmp/mhc-lite/metrics.jsonl" || fail "compare: mHC-lite composite gains are not 1 within 1e-4"
    "$mhc" compare "${cmp_args[@]}" > "$work/compare2.log" 2>&1 || fail "compare (again): $(tail -1 "$work/compare2.log")"
    [ "$(grep -c "reusing the finished run" "$work/compare2.log")" -eq 4 ] || fail "compare (again): finished runs were not reused"
  else
    fail "compare: $(tail -1 "$work/compare.log")"
  fi
  # KromHC and identity-HC side by side; KromHC's composite maps are exact like mHC-lite's.
  if "$mhc" compare "${cmp_args[@]}" --variant kromhc,ihc --out "$work/cmp-exact" > "$work/compare-exact.log" 2>&1; then
    [ "$(grep -cE '^\| (kromhc|ihc) \|' "$work/cmp-exact/report.md")" -eq 4 ] || fail "compare kromhc,ihc: $(cat "$work/cmp-exact/report.md")"
    "$python" -c '
import json, sys
last = [json.loads(l) for l in open(sys.argv[1])][-1]["diag"]
assert all(abs(g - 1) < 1e-4 for key in ("composite_fwd_max", "composite_bwd_max") for g in last[key]), last
' "$work/cmp-exact/kromhc/metrics.jsonl" || fail "compare: KromHC composite gains are not 1 within 1e-4"
  else
    fail "compare kromhc,ihc: $(tail -1 "$work/compare-exact.log")"
  fi
  # The orthogonal variants: jpmhc's composite maps keep every singular value at 1, go-mHC's (exactly
  # doubly stochastic) keep their gains at 1; the report shows the spectrum of each.
  if "$mhc" compare "${cmp_args[@]}" --variant jpmhc,gomhc --out "$work/cmp-orthogonal" > "$work/compare-orthogonal.log" 2>&1; then
    grep -q "composite σ_min, min" "$work/cmp-orthogonal/report.md" || fail "compare jpmhc,gomhc: no spectrum in the report"
    "$python" -c '
import json, sys
jp = [json.loads(l) for l in open(sys.argv[1])][-1]["diag"]
go = [json.loads(l) for l in open(sys.argv[2])][-1]["diag"]
assert all(abs(s - 1) < 1e-4 for key in ("composite_sigma_max_max", "composite_sigma_min_min") for s in jp[key]), jp
assert all(abs(g - 1) < 1e-4 for key in ("composite_fwd_max", "composite_bwd_max") for g in go[key]), go
' "$work/cmp-orthogonal/jpmhc/metrics.jsonl" "$work/cmp-orthogonal/gomhc/metrics.jsonl" ||
      fail "compare: jpmhc's composite singular values or go-mHC's composite gains are not 1 within 1e-4"
  else
    fail "compare jpmhc,gomhc: $(tail -1 "$work/compare-orthogonal.log")"
  fi
  # Seeds: 2 give the mean and (min–max), 3 (two of them reused) the mean ± std; every run listed.
  seeds_args=("${cmp_args[@]}" --variant residual,mhc --out "$work/cmp-seeds")
  if "$mhc" compare "${seeds_args[@]}" --seeds 2 > "$work/seeds2.log" 2>&1; then
    grep -qE '^\| mhc \| [0-9.]+ \([0-9.]+–[0-9.]+\) \|' "$work/cmp-seeds/report.md" || fail "compare --seeds 2: $(cat "$work/cmp-seeds/report.md")"
  else
    fail "compare --seeds 2: $(tail -1 "$work/seeds2.log")"
  fi
  if "$mhc" compare "${seeds_args[@]}" --seeds 3 > "$work/seeds3.log" 2>&1; then
    [ "$(grep -c "reusing the finished run" "$work/seeds3.log")" -eq 4 ] || fail "compare --seeds 3: the 2 seeds' runs were not reused"
    report=$work/cmp-seeds/report.md
    grep -qE '^\| mhc \| [0-9.]+ ± [0-9.e+-]+ \|' "$report" || fail "compare --seeds 3: no mean ± std row: $(cat "$report")"
    grep -qE '^\| mhc \| [+-][0-9.]+ \((\*\*difference\*\*|within the spread)\) \|' "$report" ||
      fail "compare --seeds 3: no difference verdicts: $(cat "$report")"
    for run in residual-seed1337 residual-seed1339 mhc-seed1338 mhc-seed1339; do
      grep -q "^| $run |" "$report" || fail "compare --seeds 3: no row for $run"
    done
    pngs_valid "$work/cmp-seeds/"{val_loss,grad_norm,gain_vs_depth,gain_over_steps,streams_vs_depth,streams_over_steps}.png ||
      fail "compare --seeds 3: missing or invalid plots"
  else
    fail "compare --seeds 3: $(tail -1 "$work/seeds3.log")"
  fi
  expect_error "mhc compare: --variant: unknown variant 'foo' \(accepted: residual, hc, mhc, mhc-v4, mhc-lite, kromhc, ihc, jpmhc, gomhc\)" compare --variant mhc,foo
  expect_error "mhc compare: --variant lists 'hc' twice" compare --residual hc,mhc,hc
  # Issue 35, item 22: every variant's settings are checked before the first run trains.
  expect_error "kromhc takes n = 2\^a·3\^b streams \(2, 3, 4, 6, 8, 9, 12 or 16\), got n = 5" \
    compare "${cmp_args[@]}" --variant residual,kromhc --streams 5 --out "$work/cmp-early"
  [ -z "$(ls -A "$work/cmp-early" 2>/dev/null)" ] || fail "compare --streams 5: trained $(ls "$work/cmp-early") before refusing"
  expect_error "mhc compare: $work/cmp/mhc holds a run with other settings: lr \(checkpoint 0.003, given 0.001\)" compare "${cmp_args[@]}" --variant mhc --lr 0.001
fi

# within_bf16 A B: every step's loss in run B is within bf16's unit roundoff (2^-8, relative) of
# run A's — no worse than rounding the fp32 loss itself to bf16 once. (Accumulating the products
# in bf16, as LibTorch 1.13's CPU bf16 GEMM did, made the precision section's gap 4.4e-3.)
within_bf16() {
  "$python" - "$1/metrics.jsonl" "$2/metrics.jsonl" <<'PY'
import json, sys
a, b = ([json.loads(l)["loss"] for l in open(f)] for f in sys.argv[1:3])
assert len(a) == len(b) >= 20, f"{len(a)} vs {len(b)} steps"
worst = max(abs(y - x) / x for x, y in zip(a, b))
print(f"worst relative loss gap over {len(a)} steps: {worst:.2e} (bound 2^-8 = {2**-8:.2e})")
sys.exit(worst > 2**-8)
PY
}

if want precision; then
  # bf16 activations (fp32 masters) track the fp32 run; the checkpoint keeps fp32 parameters.
  precise=("${small[@]}" --dim 64 --heads 2 --seq-len 64 --batch 16 --steps 20 --eval-every 0 --diag-every 0)
  "$mhc" train "${precise[@]}" --out "$work/fp32" > /dev/null 2>&1 || fail "fp32 run failed"
  "$mhc" train "${precise[@]}" --dtype bfloat16 --out "$work/bf16" > "$work/bf16.log" 2>&1 || fail "bf16 run failed: $(tail -1 "$work/bf16.log")"
  gap=$(within_bf16 "$work/fp32" "$work/bf16") || fail "bf16 does not track fp32: $gap"
  echo "cpu bf16 vs fp32: $gap"
  "$python" "$src/scripts/read_safetensors.py" "$work/bf16/latest" > "$work/bf16-tensors.txt" 2>&1
  grep -q "^model/blocks.0.mlp_hc.phi float32" "$work/bf16-tensors.txt" && ! grep "^model/" "$work/bf16-tensors.txt" | grep -vq " float32 " ||
    fail "bf16 run's checkpoint: $(grep '^model/' "$work/bf16-tensors.txt" | grep -v ' float32 ' | head -1)"
  expect_error "--dtype 'half' is not supported \(accepted: float32, bfloat16\)" train "${precise[@]}" --dtype half
  expect_error "--device 'gpu' is not a device \(accepted: cpu, cuda, cuda:N\)" train "${precise[@]}" --device gpu
fi

if [ "$only" = cuda ]; then  # only when asked for: it ends the script with 77 (ctest: skipped) where no GPU is usable
  # `--preset small` on the GPU in bf16 tracks the CPU's fp32 run over its first 20 steps.
  cuda_err=$("$mhc" train "${small[@]}" --steps 1 --device cuda --out "$work/probe" 2>&1 >/dev/null)
  if echo "$cuda_err" | grep -q "no CUDA GPU is usable here"; then echo "skipped: $cuda_err"; exit 77; fi
  gpu=(--preset small --data "$work/text.txt" --data-dir "$work/data" --tokenizer byte --stop-after 20 --eval-every 0
       --diag-every 10 --sample-tokens 0)
  "$mhc" train "${gpu[@]}" --out "$work/small-cpu" > "$work/small-cpu.log" 2>&1 || fail "CPU run failed: $(tail -1 "$work/small-cpu.log")"
  "$mhc" train "${gpu[@]}" --device cuda --dtype bfloat16 --out "$work/small-cuda" > "$work/small-cuda.log" 2>&1 ||
    fail "CUDA run failed: $(tail -1 "$work/small-cuda.log")"
  gap=$(within_bf16 "$work/small-cpu" "$work/small-cuda") || fail "CUDA bf16 does not track the CPU fp32 run: $gap"
  echo "cuda bf16 vs cpu fp32: $gap"
  "$mhc" analyze --ckpt "$work/small-cuda" --out "$work/small-cuda-analysis" > /dev/null 2>&1 || fail "analyze of the CUDA run failed"
fi

if want errors; then
  printf 'caf\xe9\n' > "$work/latin1.txt"
  : > "$work/empty.txt"
  mkdir -p "$work/readonly" "$work/empty-run" && chmod 500 "$work/readonly"
  expect_error "mhc train: unknown flag --lrr \(did you mean --lr\?\)" train --lrr 0.1
  expect_error "mhc train: unknown flag --sinkhorn \(did you mean --sinkhorn-iters\?\)" train --sinkhorn 5
  expect_error "data $work/nothing.txt does not exist" train "${small[@]}" --data "$work/nothing.txt"
  expect_error "data $work/empty.txt holds no text" train "${small[@]}" --data "$work/empty.txt"
  expect_error "data file $work/latin1.txt is not UTF-8 text \(invalid byte at offset 3\)" train "${small[@]}" --data "$work/latin1.txt"
  expect_error "--seq-len 100000 is longer than the validation split \([0-9]+ tokens\)" train "${small[@]}" --seq-len 100000
  expect_error "--heads 3 does not divide --dim 32" train "${small[@]}" --heads 3
  expect_error "--vocab 100 is out of range for a BPE tokenizer \(accepted: 256 to [0-9]+\)" train "${small[@]}" --tokenizer bpe --vocab 100
  expect_error "unknown variant 'sinkhorn'" train "${small[@]}" --variant sinkhorn
  expect_error "mhc train: unknown --preset 'huge' \(accepted: deep, small, tiny\)" train --preset huge
  expect_error "--lr must be a number in \[0, 1e\+30\], got 'fast'" train "${small[@]}" --lr fast
  expect_error "--recompute 'fast' is not a recomputation policy \(accepted: none, streams, blocks\)" train "${small[@]}" --recompute fast
  for every in 0 -1; do
    expect_error "--recompute-every must be a whole number in \[1, [0-9]+\], got '$every' \(accepted: auto or a whole number >= 1\)" train "${small[@]}" --recompute-every "$every"
  done
  if [ "$(id -u)" -ne 0 ]; then  # root writes anywhere
    expect_error "output folder $work/readonly/run is not writable" train "${small[@]}" --out "$work/readonly/run"
  fi
  expect_error "output folder /proc/mhc-run is not writable" train "${small[@]}" --out /proc/mhc-run
  expect_error "run folder $work/empty-run has no checkpoint yet" train --resume "$work/empty-run" < /dev/null
  expect_error "checkpoint $work/missing.safetensors does not exist" eval --ckpt "$work/missing.safetensors"
  expect_error "mhc sample: --ckpt is required" sample
  mkdir -p "$work/earlier" && ln -sf ckpt-00000001.safetensors "$work/earlier/latest"
  expect_error "mhc train: $work/earlier holds an earlier run \\(continue it with --resume $work/earlier, or start afresh with --overwrite\\)" train "${small[@]}" --out "$work/earlier"
fi

echo "train_cli ($only): $failures failed"
[ "$failures" -eq 0 ]
