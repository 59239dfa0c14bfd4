#!/usr/bin/env bash
# What `mhc train` reads and `mhc analyze` reports, attacked end to end: --data that is a device, a
# FIFO or too large, and --config that is a folder, a device, a FIFO, unreadable or not TOML, are
# refused in one line naming the path and what it is; the token cache notices an edit that keeps
# the size and the mtime; `analyze` of finite weights whose
# forward pass overflows reports the non-finite diagnostics in one line and plots what is finite.
# Usage: data_cli.sh BUILD/mhc SOURCE_DIR [section]   (section: data config cache analyze; default: all)
# The analyze section needs the test helper fill_checkpoint_tensor: $MHC_FILL_CHECKPOINT_TENSOR, or
# BUILD/tests/fill_checkpoint_tensor.
source "$(dirname "$0")/cli_common.sh"

small=(--data "$work/text.txt" --data-dir "$work/data" --tokenizer byte --dim 32 --layers 2 --heads 2 --seq-len 32
       --batch 4 --threads 2 --eval-every 0 --eval-batches 2 --sample-tokens 0 --warmup 1 --diag-every 0)
# An input that hangs or is read without end must fail the check, not the test run: every command
# here gets 60 seconds.
printf '#!/bin/sh\nexec timeout 60 %q "$@"\n' "$(readlink -f "$mhc")" > "$work/mhc-bounded"
chmod +x "$work/mhc-bounded"
mhc="$work/mhc-bounded"
mkfifo "$work/fifo"

if want data; then
  expect_error "data file /dev/zero is a character device, not a regular file" train "${small[@]}" --data /dev/zero
  expect_error "data file $work/fifo is a FIFO \(named pipe\), not a regular file" train "${small[@]}" --data "$work/fifo"
  mkdir -p "$work/with-fifo" "$work/with-device"
  cp "$work/text.txt" "$work/with-fifo/a.txt" && mkfifo "$work/with-fifo/b.pipe"
  cp "$work/text.txt" "$work/with-device/a.txt" && ln -s /dev/zero "$work/with-device/zero"
  expect_error "data file $work/with-fifo/b.pipe is a FIFO \(named pipe\), not a regular file" train "${small[@]}" --data "$work/with-fifo"
  expect_error "data file $work/with-device/zero is a character device, not a regular file" train "${small[@]}" --data "$work/with-device"
  # Sparse files: the limit is checked against the sizes before anything is read.
  truncate -s 600M "$work/huge.txt"
  expect_error "data $work/huge.txt is 600 MiB, over the 512 MiB limit on a corpus" train "${small[@]}" --data "$work/huge.txt"
  mkdir -p "$work/huge-folder" && truncate -s 300M "$work/huge-folder/a.txt" "$work/huge-folder/b.txt"
  expect_error "data $work/huge-folder is 600 MiB, over the 512 MiB limit on a corpus" train "${small[@]}" --data "$work/huge-folder"
  # A folder of regular files still trains.
  mkdir -p "$work/folder" && cp "$work/text.txt" "$work/folder/a.txt" && cp "$work/text.txt" "$work/folder/b.txt"
  "$mhc" train "${small[@]}" --data "$work/folder" --steps 1 --out "$work/folder-run" > "$work/folder.log" 2>&1 &&
    grep -q "^done: step 1" "$work/folder.log" || fail "a folder of text files: $(tail -1 "$work/folder.log")"
fi

if want config; then
  expect_error "config $work is a folder, not a regular file" train "${small[@]}" --config "$work"
  expect_error "config /dev/zero is a character device, not a regular file" train "${small[@]}" --config /dev/zero
  expect_error "config $work/fifo is a FIFO \(named pipe\), not a regular file" train "${small[@]}" --config "$work/fifo"
  expect_error "cannot read config $work/missing.toml: No such file or directory" train "${small[@]}" --config "$work/missing.toml"
  echo "steps = 1" > "$work/secret.toml" && chmod 000 "$work/secret.toml"
  if [ "$(id -u)" -ne 0 ]; then  # root reads anything
    expect_error "cannot read config $work/secret.toml: Permission denied" train "${small[@]}" --config "$work/secret.toml"
  fi
  printf 'steps = = 3\n' > "$work/bad.toml"
  expect_error "config $work/bad.toml: .* \(line 1\)" train "${small[@]}" --config "$work/bad.toml"
  printf 'steps = 1\n\x00\x01\xff\n' > "$work/binary.toml"
  expect_error "config $work/binary.toml: .* \(line 2\)" train "${small[@]}" --config "$work/binary.toml"
  truncate -s 2M "$work/large.toml"
  expect_error "config $work/large.toml is larger than the 1 MiB limit" train "${small[@]}" --config "$work/large.toml"
  # A valid file is applied.
  printf 'steps = 2\nlr = 0.001\n' > "$work/good.toml"
  "$mhc" train "${small[@]}" --config "$work/good.toml" --out "$work/config-run" > "$work/config.log" 2>&1 &&
    grep -q "^done: step 2" "$work/config.log" || fail "a valid config: $(tail -1 "$work/config.log")"
fi

if want cache; then
  # tokenized RUN_LOG: the "train / validation" token counts the run tokenized, or nothing when it
  # read them from the cache.
  tokenized() { sed -n 's/^data: .* tokenized: \([0-9]*\) train \/ \([0-9]*\) validation tokens$/\1 \2/p' "$1"; }
  corpus="$work/cache-corpus.txt"
  cp "$work/text.txt" "$corpus" && touch -d "2020-01-02 03:04:05" "$corpus"
  "$mhc" train "${small[@]}" --data "$corpus" --steps 1 --out "$work/cache-1" > "$work/cache-1.log" 2>&1 || fail "cache: first run"
  first=$(tokenized "$work/cache-1.log")
  [ -n "$first" ] || fail "cache: the first run did not tokenize: $(cat "$work/cache-1.log")"
  # The same size and mtime, different content: " times" -> " time " (trailing blanks are trimmed,
  # so every line loses a token).
  before=$(stat -c '%s %Y' "$corpus")
  sed 's/ times$/ time /' "$work/text.txt" > "$work/edited.txt" && cat "$work/edited.txt" > "$corpus"
  touch -d "2020-01-02 03:04:05" "$corpus"
  [ "$(stat -c '%s %Y' "$corpus")" = "$before" ] && ! cmp -s "$corpus" "$work/text.txt" || fail "cache: the edit changed the size or mtime"
  "$mhc" train "${small[@]}" --data "$corpus" --steps 1 --out "$work/cache-2" > "$work/cache-2.log" 2>&1 || fail "cache: second run"
  second=$(tokenized "$work/cache-2.log")
  [ -n "$second" ] && [ "$second" != "$first" ] ||
    fail "cache: the edited corpus was not tokenized again (first run: '$first' tokens, second: '$second')"
  "$mhc" train "${small[@]}" --data "$corpus" --steps 1 --out "$work/cache-3" > "$work/cache-3.log" 2>&1 || fail "cache: third run"
  [ -z "$(tokenized "$work/cache-3.log")" ] || fail "cache: an unchanged corpus was tokenized again"
fi

if want analyze; then
  fill=${MHC_FILL_CHECKPOINT_TENSOR:-$(dirname "$(readlink -f "$1")")/tests/fill_checkpoint_tensor}
  weight=model/blocks.1.attn.qkv.weight
  "$mhc" train "${small[@]}" --steps 2 --out "$work/analyze-1e30" > /dev/null 2>&1 || fail "analyze: training failed"
  # Written by the library itself, so the checksum holds whatever the checkpoint format. (NaN
  # weights cannot be written at all, and are refused at load: tests/adversarial_cli.sh nonfinite.)
  "$fill" "$work/analyze-1e30" "$weight" 1e30 || fail "analyze: cannot set $weight to 1e30"
  # Finite weights whose forward pass overflows: one warning, and plots of what is finite.
  "$mhc" analyze --ckpt "$work/analyze-1e30" > "$work/analyze.out" 2> "$work/analyze.err"
  status=$?
  [ "$status" -eq 0 ] || fail "analyze of overflowing weights: exit status $status: $(cat "$work/analyze.err")"
  [ "$(wc -l < "$work/analyze.err")" -eq 1 ] &&
    grep -Eq "^warning: [0-9]+ of [0-9]+ diagnostic values are not finite \(in .*diag.*\)" "$work/analyze.err" ||
    fail "analyze of overflowing weights: stderr: $(cat "$work/analyze.err")"
  pngs_valid() { "$python" "$src/tests/check_png.py" "$@"; }
  pngs_valid "$work/analyze-1e30/analysis/"{gain_vs_depth,h_res_mean,sinkhorn_error,streams}.png ||
    fail "analyze of overflowing weights: missing or invalid plots"
  # What is finite is kept: the single-layer gains and the effective ranks of the sublayers before
  # the overflow.
  "$python" -c '
import json, math, sys
a = json.load(open(sys.argv[1]))
for key in ("fwd_gain_max", "effective_rank"):
    values = a["diag"][key]
    assert None in values and any(v is not None and math.isfinite(v) for v in values), (key, values)
' "$work/analyze-1e30/analysis/analysis.json" || fail "analyze of overflowing weights: analysis.json"
fi

echo "data_cli ($only): $failures failed"
[ "$failures" -eq 0 ]
