#!/usr/bin/env bash
# Data-parallel `mhc train` on loopback (mhc/distributed.h): 2 ranks reproduce one rank's losses at
# the same global batch and end with identical parameters, torch's own launcher works, a killed or
# stalled rank makes the survivor exit non-zero within --dist-timeout naming it, checkpoints resume
# across world sizes, and a bad environment gets a one-line error.
# Usage: dist_cli.sh BUILD/mhc SOURCE_DIR [section]   (section: equivalence torchrun failure resume
# errors; default: all)
source "$(dirname "$0")/cli_common.sh"

small=(--data "$work/text.txt" --data-dir "$work/data" --tokenizer byte --dim 32 --layers 2 --heads 2 --seq-len 32
       --batch 8 --threads 1 --eval-every 0 --eval-batches 2 --sample-tokens 0 --warmup 2 --diag-every 0)

free_port() { /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# same_losses A B [FIRST]: metrics.jsonl losses from step FIRST on agree within 1e-5 relative.
same_losses() {
  /usr/bin/python3 - "$1/metrics.jsonl" "$2/metrics.jsonl" "${3:-1}" <<'PY'
import json, sys
a, b = ([json.loads(l) for l in open(p)] for p in sys.argv[1:3])
first = int(sys.argv[3])
a, b = [j for j in a if j["step"] >= first], [j for j in b if j["step"] >= first]
assert [j["step"] for j in a] == [j["step"] for j in b] and a, ("steps differ", len(a), len(b))
worst = max(abs(x["loss"] - y["loss"]) / abs(y["loss"]) for x, y in zip(a, b))
assert worst < 1e-5, "losses differ by %.2e relative" % worst
PY
}
reference() {  # one rank, the whole batch: the run every distributed one must reproduce
  [ -f "$work/one-$1/metrics.jsonl" ] || "$mhc" train "${small[@]}" --steps "$1" --out "$work/one-$1" > "$work/one-$1.log" 2>&1 ||
    fail "single-rank reference: $(tail -1 "$work/one-$1.log")"
}

if want equivalence; then
  reference 10
  if "$mhc" launch --nproc 2 -- train "${small[@]}" --steps 10 --out "$work/two" > "$work/two.log" 2>&1; then
    grep -q "2 ranks x 1 threads" "$work/two.log" || fail "equivalence: not a 2-rank run: $(head -1 "$work/two.log")"
    grep -q "^parameters identical on all 2 ranks" "$work/two.log" || fail "equivalence: parameters not identical across ranks"
    same_losses "$work/two" "$work/one-10" || fail "equivalence: 2 ranks x batch 4 vs 1 rank x batch 8"
    [ "$(wc -l < "$work/two/metrics.jsonl")" -eq 10 ] || fail "equivalence: rank 0 alone must log (10 lines)"
  else
    fail "equivalence: mhc launch: $(tail -2 "$work/two.log")"
  fi
fi

if want torchrun; then
  reference 10
  # --redirects 1 --tee 1: Debian's torchrun 1.13 under Python 3.11 crashes on its defaults (its
  # Std flag parser loses Std.NONE, which 3.11's Flag iteration skips); these values avoid it.
  if /usr/bin/python3 -m torch.distributed.run --no_python --nproc_per_node 2 --master_port "$(free_port)" \
      --redirects 1 --tee 1 "$mhc" train "${small[@]}" --steps 10 --out "$work/torchrun" > "$work/torchrun.log" 2>&1; then
    grep -Eq "^(\[default0\]:)?parameters identical on all 2 ranks" "$work/torchrun.log" || fail "torchrun: parameters not identical"
    same_losses "$work/torchrun" "$work/one-10" || fail "torchrun: losses differ from the single rank's"
  else
    fail "torchrun: $(grep -m1 -i error "$work/torchrun.log")"
  fi
fi

if want failure; then
  # survivor_exits VICTIM_RANK SIGNAL: 2 ranks by hand; once training runs, VICTIM gets SIGNAL; the
  # other rank must exit non-zero within --dist-timeout (+ its roll call) naming the victim.
  survivor_exits() {
    local victim=$1 signal=$2 port pids=() out="$work/fail-$1-$2" t0 status
    port=$(free_port)
    for rank in 0 1; do
      RANK=$rank WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
        "$mhc" train "${small[@]}" --steps 100000 --dist-timeout 5 --out "$out" > "$out.$rank.log" 2> "$out.$rank.err" &
      pids+=($!)
    done
    for _ in $(seq 1 600); do [ -f "$out/metrics.jsonl" ] && [ "$(wc -l < "$out/metrics.jsonl")" -ge 3 ] && break; sleep 0.1; done
    kill "-$signal" "${pids[$victim]}"
    t0=$(date +%s)
    wait "${pids[$((1 - victim))]}"
    status=$?
    kill -9 "${pids[$victim]}" 2>/dev/null
    wait "${pids[$victim]}" 2>/dev/null
    [ "$status" -ne 0 ] || fail "failure ($signal rank $victim): the survivor exited 0"
    [ $(($(date +%s) - t0)) -le 20 ] || fail "failure ($signal rank $victim): the survivor took $(($(date +%s) - t0)) s"
    grep -Eq "^error: .*rank $victim did not answer" "$out.$((1 - victim)).err" ||
      fail "failure ($signal rank $victim): $(cat "$out.$((1 - victim)).err")"
    [ "$(grep -c . "$out.$((1 - victim)).err")" -eq 1 ] || fail "failure ($signal rank $victim): not one line: $(cat "$out.$((1 - victim)).err")"
  }
  survivor_exits 1 KILL   # a dead rank: its sockets close
  survivor_exits 0 KILL   # rank 0 hosts the store: the survivor cannot even hold a roll call
  survivor_exits 1 STOP   # a stalled rank: only the timeout can tell
fi

if want resume; then
  reference 20
  "$mhc" launch --nproc 2 -- train "${small[@]}" --steps 20 --stop-after 10 --out "$work/a" > "$work/a1.log" 2>&1 &&
    "$mhc" train --resume "$work/a" --stop-after 0 > "$work/a2.log" 2>&1 || fail "resume 2 -> 1: $(tail -1 "$work/a2.log")"
  same_losses "$work/a" "$work/one-20" || fail "resume 2 -> 1 ranks: losses differ from the uninterrupted run"
  "$mhc" train "${small[@]}" --steps 20 --stop-after 10 --out "$work/b" > "$work/b1.log" 2>&1 &&
    "$mhc" launch --nproc 2 -- train --resume "$work/b" --stop-after 0 > "$work/b2.log" 2>&1 || fail "resume 1 -> 2: $(tail -1 "$work/b2.log")"
  same_losses "$work/b" "$work/one-20" || fail "resume 1 -> 2 ranks: losses differ from the uninterrupted run"
fi

if want errors; then
  expect_failure 2 "WORLD_SIZE is set but RANK is not" WORLD_SIZE=2 -- train "${small[@]}" --out "$work/e"
  expect_failure 2 "RANK is set but WORLD_SIZE is not" RANK=0 -- train "${small[@]}" --out "$work/e"
  expect_failure 2 "RANK=2 is out of range for WORLD_SIZE=2 \(accepted: 0 to 1\)" RANK=2 WORLD_SIZE=2 -- train "${small[@]}" --out "$work/e"
  expect_failure 2 "WORLD_SIZE must be a whole number" RANK=0 WORLD_SIZE=two -- train "${small[@]}" --out "$work/e"
  expect_failure 2 "WORLD_SIZE=2 needs MASTER_ADDR" RANK=0 WORLD_SIZE=2 -- train "${small[@]}" --out "$work/e"
  expect_failure 2 "--batch 7 does not split over WORLD_SIZE=2 ranks" RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=1 -- \
    train "${small[@]}" --batch 7 --out "$work/e"
  expect_failure 1 "rank 1 cannot reach the rendezvous store at 127.0.0.1:1 \(MASTER_ADDR:MASTER_PORT\) within 2 s" \
    RANK=1 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=1 -- train "${small[@]}" --dist-timeout 2 --out "$work/e"
  expect_failure 2 "mhc launch: give the command after --" -- launch --nproc 2
  expect_failure 2 "mhc compare runs in one process" RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=1 -- compare "${small[@]}" --out "$work/e"
fi

echo "dist_cli ($only): $failures failed"
[ "$failures" -eq 0 ]
