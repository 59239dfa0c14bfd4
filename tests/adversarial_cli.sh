#!/usr/bin/env bash
# Attacks on a run's checkpoints and folder, each of which once loaded garbage, crashed or lost data:
# an update that overflows, out-of-range and malformed metadata (re-signed, so that they get past
# the checksum), a header altered without re-signing, a config claiming a huge model, `latest` as a
# copy, dangling or not a file, temporaries left by a kill, two runs on one folder, and a full disk
# under metrics.jsonl. Every refusal is one line naming the file and the key.
# Usage: adversarial_cli.sh BUILD/mhc SOURCE_DIR [section]   (section: nonfinite position integrity
# schema latest lock metrics; default: all)
source "$(dirname "$0")/cli_common.sh"

small=(--data "$work/text.txt" --data-dir "$work/data" --tokenizer byte --dim 32 --layers 2 --heads 2 --seq-len 32
       --batch 4 --threads 2 --eval-every 10 --eval-batches 2 --sample-tokens 0 --warmup 5)

# A finished 4-step run whose checkpoint the attacks alter.
"$mhc" train "${small[@]}" --steps 4 --out "$work/base" > "$work/base.log" 2>&1 || fail "base run: $(tail -1 "$work/base.log")"
base=$(readlink -f "$work/base/latest")

# edit DST PYTHON: a copy of the base checkpoint at DST after PYTHON has changed `header` (the JSON
# header; `meta` is its metadata) — drop(name) removes a tensor — re-signed with a valid checksum.
edit() {
  "$python" - "$base" "$@" <<'PY'
import hashlib, json, struct, sys
src, dst, code = sys.argv[1:4]
f = open(src, "rb").read()
(n,) = struct.unpack("<Q", f[:8])
header, data = json.loads(f[8 : 8 + n]), f[8 + n :]
meta = header["__metadata__"]

def drop(name):
    global data
    begin, end = header.pop(name)["data_offsets"]
    data = data[:begin] + data[end:]
    for entry in header.values():
        if "data_offsets" in entry and entry["data_offsets"][0] >= end:
            entry["data_offsets"] = [o - (end - begin) for o in entry["data_offsets"]]

exec(code)
meta["sha256"] = "0" * 64
js = json.dumps(header, separators=(",", ":")).encode()
js += b" " * (-len(js) % 8)
out = struct.pack("<Q", len(js)) + js + data
at = out.find(b'"sha256":"' + b"0" * 64) + len(b'"sha256":"')
out = out[:at] + hashlib.sha256(out).hexdigest().encode() + out[at + 64 :]
open(dst, "wb").write(out)
PY
}

# flip FILE TEXT NEW: FILE with the first TEXT of its header overwritten by NEW (same length), not re-signed.
flip() {
  "$python" - "$@" <<'PY'
import sys
path, old, new = sys.argv[1], sys.argv[2].encode(), sys.argv[3].encode()
f = bytearray(open(path, "rb").read())
at = f.find(old)
assert at > 0 and len(old) == len(new), (old, new)
f[at : at + len(old)] = new
open(path, "wb").write(f)
PY
}

all_finite() {
  "$python" - "$src/scripts" "$1" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np, read_safetensors
tensors, _, _ = read_safetensors.read(sys.argv[2])
bad = [n for n, a in tensors.items() if a.dtype.kind == "f" and not np.isfinite(a).all()]
sys.exit(f"non-finite tensors: {bad}" if bad else 0)
PY
}

if want nonfinite; then
  # lr 1e20 blows the weights up (to ~1e19) in one update; the later steps are skipped, and `latest`
  # — the only checkpoint kept — holds finite weights and loads.
  out="$work/overflow"
  "$mhc" train "${small[@]}" --steps 3 --lr 1e20 --ckpt-every 1 --keep 1 --out "$out" > "$out.log" 2>&1
  status=$?
  [ "$status" -eq 0 ] || fail "nonfinite: exit status $status: $(tail -1 "$out.log")"
  [ "$(grep -c '"skipped":true' "$out/metrics.jsonl")" -ge 1 ] || fail "nonfinite: no step was skipped: $(cat "$out/metrics.jsonl")"
  finite=$(all_finite "$out/latest" 2>&1) || fail "nonfinite: latest: $finite"
  "$mhc" eval --ckpt "$out" --batches 1 > "$work/overflow-eval.txt" 2>&1 || fail "nonfinite: eval of latest: $(cat "$work/overflow-eval.txt")"
  # A checkpoint holding a NaN weight (re-signed) is refused, never trained on.
  edit "$work/nan.safetensors" '
import numpy as np
begin, end = header["model/head.weight"]["data_offsets"]
data = data[:begin] + np.float32("nan").tobytes() + data[begin + 4 :]'
  expect_error "checkpoint $work/nan.safetensors: tensor 'model/head.weight' holds non-finite values" eval --ckpt "$work/nan.safetensors"
fi

if want position; then
  # The data position indexes the sampler's windows: a negative or huge one once crashed resume.
  for p in -5 9223372036854775807 12abc; do
    edit "$work/pos.safetensors" "meta['data_position'] = '$p'"
    expect_error "checkpoint $work/pos.safetensors: metadata 'data_position' is .*$p" train --resume "$work/pos.safetensors" --out "$work/pos-run"
  done
  edit "$work/pos.safetensors" "meta['data_position'] = '17'"
  expect_error "checkpoint $work/pos.safetensors: metadata 'data_position' is 17, expected step x batch x accum = 16" train --resume "$work/pos.safetensors" --out "$work/pos-run"
  for key in step bad_steps adam_steps; do
    edit "$work/count.safetensors" "meta['$key'] = '-1'"
    expect_error "checkpoint $work/count.safetensors: metadata '$key' is '-1', not a whole number in \[0, [0-9]+\]" train --resume "$work/count.safetensors" --out "$work/pos-run"
  done
  edit "$work/count.safetensors" "meta['step'] = '5'"
  expect_error "checkpoint $work/count.safetensors: metadata 'step' is '5', not a whole number in \[0, 4\]" eval --ckpt "$work/count.safetensors"
fi

if want integrity; then
  # The checksum covers the header: one altered digit of the step, or a dtype relabelled, is refused.
  cp "$base" "$work/step.safetensors" && flip "$work/step.safetensors" '"step":"4"' '"step":"3"'
  cp "$base" "$work/dtype.safetensors" && flip "$work/dtype.safetensors" '"dtype":"F32"' '"dtype":"I32"'
  for f in step dtype; do
    expect_error "checkpoint $work/$f.safetensors is unreadable: checksum mismatch" eval --ckpt "$work/$f.safetensors"
  done
  # Re-signed, a relabelled dtype or a changed shape still does not match the model.
  edit "$work/relabel.safetensors" "header['model/head.weight']['dtype'] = 'I32'"
  expect_error "checkpoint $work/relabel.safetensors: tensor 'model/head.weight' is Int \[257, 32\], expected Float \[257, 32\]" eval --ckpt "$work/relabel.safetensors"
  edit "$work/shape.safetensors" "header['model/head.weight']['shape'] = [32, 257]"
  expect_error "checkpoint $work/shape.safetensors: tensor 'model/head.weight' is Float \[32, 257\], expected Float \[257, 32\]" eval --ckpt "$work/shape.safetensors"
  # A config claiming dim 4096 x 64 layers is refused before that ~13-billion-parameter model is built.
  edit "$work/huge.safetensors" "
import json
c = json.loads(meta['config']); c['dim'] = 4096; c['layers'] = 64; meta['config'] = json.dumps(c)"
  expect_error "checkpoint $work/huge.safetensors: metadata 'config' describes a model of at least [0-9.]+M parameters, but its model/ tensors hold [0-9.]+k" eval --ckpt "$work/huge.safetensors"
  # Format 1 (header outside the checksum) is refused as such.
  edit "$work/old.safetensors" "meta['format'] = 'mhc-checkpoint-1'"
  expect_error "checkpoint $work/old.safetensors has the old format mhc-checkpoint-1, whose header is not under its checksum" eval --ckpt "$work/old.safetensors"
  # Issue 35, item 5: one header entry whose shape nests 100,000 arrays deep, not re-signed (the
  # checksum is checked after the header is parsed) — one line, within seconds, in bounded memory.
  "$python" - "$base" "$work/deep.safetensors" <<'PY'
import struct, sys
f = open(sys.argv[1], "rb").read()
(n,) = struct.unpack("<Q", f[:8])
deep = b',"deep":{"dtype":"F32","shape":' + b"[" * 100000 + b"]" * 100000 + b',"data_offsets":[0,0]}'
header = f[8 : 8 + n].rstrip()[:-1] + deep + b"}"
header += b" " * (-len(header) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(header)) + header + f[8 + n :])
PY
  for command in eval sample analyze; do
    t0=$(date +%s.%N)
    err=$( (ulimit -v 8000000; "$mhc" "$command" --ckpt "$work/deep.safetensors" 2>&1 >/dev/null); echo "status $?")
    [ "$(printf '%s\n' "$err" | head -1)" = "error: checkpoint $work/deep.safetensors is unreadable: its header's JSON nested deeper than 64 levels" ] &&
      [ "$(printf '%s\n' "$err" | tail -1)" = "status 2" ] && [ "$(printf '%s\n' "$err" | wc -l)" -eq 2 ] ||
      fail "$command of a 100,000-deep header: $err"
    awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { exit !(b - a < 10) }' || fail "$command of a 100,000-deep header took over 10 s"
  done
  "$python" "$src/scripts/read_safetensors.py" "$base" > "$work/py.txt" 2>&1 && grep -q "^sha256 ok" "$work/py.txt" ||
    fail "python reader on the base checkpoint: $(cat "$work/py.txt")"
  ! "$python" "$src/scripts/read_safetensors.py" "$work/step.safetensors" > /dev/null 2>&1 ||
    fail "python reader accepted a checkpoint whose header was altered"
fi

if want schema; then
  # Each missing or malformed key: one line naming the file and the key, not the library's text.
  check() {  # check PATTERN PYTHON
    edit "$work/schema.safetensors" "$2"
    expect_error "checkpoint $work/schema.safetensors(:| is unreadable:) $1" eval --ckpt "$work/schema.safetensors"
  }
  check "no metadata 'tokenizer'" "del meta['tokenizer']"
  check "metadata 'tokenizer' and tensor 'tokenizer' are not a tokenizer: unknown tokenizer 'words'" "meta['tokenizer'] = 'words'"
  check "no tensor 'tokenizer' of bytes" "drop('tokenizer')"
  check "no tensor 'rng/torch_cpu' \(Byte \[[0-9]+\]\)" "drop('rng/torch_cpu')"
  check "no tensor 'model/head.weight' \(Float \[257, 32\]\)" "drop('model/head.weight')"
  check "no metadata 'data_position'" "del meta['data_position']"
  check "metadata 'step' is 'four', not a whole number" "meta['step'] = 'four'"
  check "metadata 'config' is not a JSON object of settings" "meta['config'] = '{not json'"
  check "metadata 'config': the run's settings lack '[a-z-]+'" "meta['config'] = '[1, 2]'"
  check "metadata 'config': --dim must be" "
import json
c = json.loads(meta['config']); c['dim'] = 'wide'; meta['config'] = json.dumps(c)"
  check "no metadata 'config'" "del meta['config']"
  check "metadata 'step' is not a string" "meta['step'] = 4"
  check "tensor 'tokenizer': 'data_offsets' is not two byte offsets" "header['tokenizer']['data_offsets'] = [str(o) for o in header['tokenizer']['data_offsets']]"
  check "tensor 'tokenizer': 'shape' holds -1, not a size" "header['tokenizer']['shape'] = [-1]"
  # Every dtype the format defines is parsed; one that torch cannot hold is named (issue 35, item 7).
  check "tensor 'tokenizer': 'dtype' is not a safetensors dtype: \"F7\"" "header['tokenizer']['dtype'] = 'F7'"
  check "tensor 'tokenizer' has dtype F4, which no checkpoint holds" "
header['tokenizer']['dtype'] = 'F4'; header['tokenizer']['shape'] = [2 * header['tokenizer']['shape'][0]]"
  # A dimension of 2^64 - 1 read as int64 was "negative dimension -1", naming neither file nor tensor
  # (issue 35, item 19).
  check "tensor 'tokenizer': 'shape' holds 18446744073709551615, larger than a dimension can be \(at most 9223372036854775807\)" \
    "header['tokenizer']['shape'] = [2**64 - 1]"
  printf '\x02\x00\x00\x00\x00\x00\x00\x00[]' > "$work/array.safetensors"
  expect_error "checkpoint $work/array.safetensors is unreadable: its header is not a JSON object" eval --ckpt "$work/array.safetensors"
fi

if want latest; then
  # A copy that followed the symlink (cp -rL) has `latest` as a regular file: it is the checkpoint.
  cp -rL "$work/base" "$work/copied"
  [ -f "$work/copied/latest" ] && [ ! -L "$work/copied/latest" ] || fail "latest: cp -rL did not leave a regular file"
  "$mhc" eval --ckpt "$work/copied" --batches 1 > "$work/copied-eval.txt" 2>&1 || fail "latest: eval of a copied run: $(cat "$work/copied-eval.txt")"
  # Temporaries left by a kill go on the next start; other files stay.
  touch "$work/copied/ckpt-00000005.safetensors.tmp.4242" "$work/copied/metrics.jsonl.tmp.17" "$work/copied/notes.tmp.1"
  ln -s ckpt-00000005.safetensors "$work/copied/latest.tmp.4242"
  "$mhc" train --resume "$work/copied" --steps 4 > "$work/copied-resume.log" 2>&1 ||
    fail "latest: resume of a copied run: $(tail -1 "$work/copied-resume.log")"
  left=$(cd "$work/copied" && ls -A | grep '\.tmp\.' | tr '\n' ' ')
  [ "$left" = "notes.tmp.1 " ] || fail "latest: temporaries after a new start: '$left', want 'notes.tmp.1 '"
  mkdir -p "$work/odd" && cp "$base" "$work/odd/"
  ln -sfn ckpt-00000009.safetensors "$work/odd/latest"
  expect_error "run folder $work/odd: 'latest' points at ckpt-00000009.safetensors, which does not exist" eval --ckpt "$work/odd"
  mkdir -p "$work/odd/dir" && ln -sfn dir "$work/odd/latest"
  expect_error "run folder $work/odd: 'latest' points at dir, which is a directory, not a checkpoint" eval --ckpt "$work/odd"
  mkfifo "$work/odd/fifo" && ln -sfn fifo "$work/odd/latest"
  expect_error "run folder $work/odd: 'latest' points at fifo, which is a FIFO, not a checkpoint" eval --ckpt "$work/odd"
  ln -sfn /dev/null "$work/odd/latest"
  expect_error "run folder $work/odd: 'latest' points at /dev/null, which is a character device, not a checkpoint" eval --ckpt "$work/odd"
  rm "$work/odd/latest" && mkdir "$work/odd/latest"
  expect_error "run folder $work/odd: 'latest' is a directory, not a checkpoint" eval --ckpt "$work/odd"
  expect_error "checkpoint $work/odd/fifo is a FIFO, not a checkpoint file" eval --ckpt "$work/odd/fifo"
fi

if want lock; then
  # A second run on a folder in use is refused, naming the first run's PID.
  out="$work/locked"
  "$mhc" train "${small[@]}" --steps 100000 --ckpt-every 1 --keep 2 --out "$out" > "$out.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do [ -e "$out/latest" ] && break; sleep 0.1; done
  [ -e "$out/latest" ] || fail "lock: the first run did not checkpoint: $(tail -1 "$out.log")"
  expect_error "$out is in use by process $pid" train "${small[@]}" --steps 10 --out "$out"
  # --overwrite deletes nothing of a run still writing there (stopped meanwhile, so that it cannot
  # write a new checkpoint that would hide a deletion).
  kill -STOP "$pid"
  expect_error "$out is in use by process $pid" train "${small[@]}" --steps 10 --out "$out" --overwrite
  [ -e "$out/latest" ] || fail "lock: --overwrite deleted the checkpoints of a running run"
  kill -CONT "$pid"
  kill -TERM "$pid" && wait "$pid" || fail "lock: the first run did not stop cleanly"
  # Once it has ended, the folder is free again.
  "$mhc" train --resume "$out" --stop-after "$(($(grep -c . "$out/metrics.jsonl") + 1))" > "$work/relock.log" 2>&1 ||
    fail "lock: resume after the first run ended: $(tail -1 "$work/relock.log")"
fi

if want metrics; then
  # A full disk under metrics.jsonl: the run fails at the first line it cannot write. RLIMIT_FSIZE
  # (with SIGXFSZ ignored, so that the write fails with EFBIG) stages it without root or a mount;
  # the base run above already cached the tokens, so the first file to grow past 4 KiB is
  # metrics.jsonl (about 200 bytes a step; the checkpoint comes only at the end).
  out="$work/full"
  err=$( (trap '' XFSZ; ulimit -f 4; exec "$mhc" train "${small[@]}" --steps 100 --ckpt-every 0 --out "$out") 2>&1 >/dev/null)
  status=$?
  [ "$status" -eq 1 ] && [ "$(printf '%s\n' "$err" | wc -l)" -eq 1 ] &&
    printf '%s' "$err" | grep -Eq "^error: cannot write $out/metrics.jsonl: File too large \(step [0-9]+'s metrics would be lost\)" ||
    fail "metrics: a write past the file size limit: status $status, stderr: $err"
  lines=$(wc -l < "$out/metrics.jsonl")
  [ "$lines" -gt 5 ] && [ "$lines" -lt 100 ] || fail "metrics: $lines lines before the failure"
fi

echo "adversarial_cli ($only): $failures failed"
[ "$failures" -eq 0 ]
