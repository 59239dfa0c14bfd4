#!/usr/bin/env bash
# Data-parallel `mhc train` on loopback (mhc/distributed.h): 2 ranks reproduce one rank's losses at
# the same global batch and end with identical parameters, torch's own launcher works, a killed or
# stalled rank makes the survivor exit non-zero within --dist-timeout naming it (SIGPIPE from a write
# to the dead rank included), checkpoints resume across world sizes, a bad environment gets a
# one-line error, the rendezvous ends within --dist-timeout even against a port that never answers,
# ranks given different settings refuse to start, and `mhc launch` stops the other ranks as soon as
# one fails.
# Usage: dist_cli.sh BUILD/mhc SOURCE_DIR [section]   (section: equivalence torchrun failure resume
# errors rendezvous settings launcher; default: all)
source "$(dirname "$0")/cli_common.sh"
source "$(dirname "$0")/dist_common.sh"

small=(--data "$work/text.txt" --data-dir "$work/data" --tokenizer byte --dim 32 --layers 2 --heads 2 --seq-len 32
       --batch 8 --threads 1 --eval-every 0 --eval-batches 2 --sample-tokens 0 --warmup 2 --diag-every 0)

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
  if "$python" -m torch.distributed.run --no_python --nproc_per_node 2 --master_port "$(free_port)" \
      "$mhc" train "${small[@]}" --steps 10 --out "$work/torchrun" > "$work/torchrun.log" 2>&1; then
    grep -q "^parameters identical on all 2 ranks" "$work/torchrun.log" || fail "torchrun: parameters not identical"
    same_losses "$work/torchrun" "$work/one-10" || fail "torchrun: losses differ from the single rank's"
  else
    fail "torchrun: $(grep -m1 -i error "$work/torchrun.log")"
  fi
fi

if want failure; then
  # A busy rank 0 is not a dead one (issue 35, item 10): its evaluation of a large validation split
  # takes several times --dist-timeout 1, and the run completes on both ranks.
  for _ in $(seq 1 40); do cat "$work/text.txt"; done > "$work/large.txt"
  port=$(free_port) pids=()
  t0=$(date +%s.%N)
  for rank in 0 1; do
    RANK=$rank WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port "$mhc" train "${small[@]}" --data "$work/large.txt" \
      --dim 96 --layers 4 --eval-batches 0 --steps 2 --dist-timeout 1 --out "$work/busy" \
      > "$work/busy.$rank.log" 2> "$work/busy.$rank.err" &
    pids+=($!)
  done
  for rank in 0 1; do
    wait "${pids[$rank]}" || fail "busy rank 0: rank $rank failed: $(cat "$work/busy.$rank.err")"
  done
  took=$(awk -v t0="$t0" -v now="$(date +%s.%N)" 'BEGIN { printf "%.1f", now - t0 }')
  evaluated=$(grep -c '"val_loss"' "$work/busy/metrics.jsonl")
  echo "busy rank 0: an evaluation of the whole validation split, $took s in all with --dist-timeout 1"
  [ "$evaluated" -ge 1 ] || fail "busy rank 0: no evaluation logged"
  # Measured here: that evaluation alone takes about 3.5 s on one thread (4.4 s for the whole 1-step run).
  awk -v took="$took" 'BEGIN { exit !(took >= 3) }' || fail "busy rank 0: the run took $took s, too fast to show a wait past --dist-timeout 1"
  survivor_exits 1 KILL   # a dead rank: its sockets close
  survivor_exits 0 KILL   # rank 0 hosts the store: the survivor cannot even hold a roll call
  survivor_exits 1 STOP   # a stalled rank: only the timeout can tell
  survivor_exits 0 STOP   # a stalled store host: its socket is open, but nothing answers the roll call
  # SIGPIPE, which a write to a dead peer's socket raises, must not kill the survivor silently.
  peer_dies=${MHC_PEER_DIES:-$(dirname "$(readlink -f "$1")")/tests/peer_dies}
  port=$(free_port)
  RANK=1 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port "$peer_dies" 2> "$work/sigpipe.1.err" &
  RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port "$peer_dies" 2> "$work/sigpipe.0.err"
  status=$?
  wait
  [ "$status" -eq 1 ] || fail "SIGPIPE: rank 0 exited $status (1 expected; 141 is death by SIGPIPE): $(cat "$work/sigpipe.0.err")"
  one_error_line "$work/sigpipe.0.err" SIGPIPE "rank 1 did not answer"
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
  # Only training runs as one job of several ranks; refused before any rank starts.
  expect_failure 2 "mhc launch: the command after -- must be train, got 'bench pipeline' \(mhc bench pipeline --stages S starts its own ranks\)" \
    -- launch --nproc 2 -- bench pipeline --stages 2 --preset tiny
  expect_failure 2 "mhc launch: the command after -- must be train, got 'sample'" -- launch -- sample --ckpt "$work/none"
  expect_failure 2 "mhc launch: the command after -- must be train, got 'launch'" -- launch -- launch -- train
  expect_failure 2 "mhc compare runs in one process" RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=1 -- compare "${small[@]}" --out "$work/e"
fi

if want rendezvous; then
  # Every rendezvous step ends by --dist-timeout 5 (+3 s to start and report), naming what it awaited.
  port=$(free_port) t0=$(date +%s.%N)
  RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port "$mhc" train "${small[@]}" --dist-timeout 5 \
    --out "$work/lone" > /dev/null 2> "$work/lone.err" && fail "rendezvous: a lone rank 0 exited 0"
  took_at_most 8 "$t0" "rendezvous: a lone rank 0 (no peer ever comes)"
  one_error_line "$work/lone.err" "rendezvous: a lone rank 0" "rank 0 timed out after 5 s \(--dist-timeout\) awaiting rank 1" \
    "at the rendezvous store at 127\.0\.0\.1:$port \(MASTER_ADDR:MASTER_PORT\): it never joined"

  start_silent_listener
  port=$listener_port t0=$(date +%s.%N)
  RANK=1 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port timeout 60 "$mhc" train "${small[@]}" --dist-timeout 5 \
    --out "$work/lone" > /dev/null 2> "$work/silent.err" && fail "rendezvous: rank 1 against a silent port exited 0"
  took_at_most 8 "$t0" "rendezvous: a lone rank 1 against a port that never answers"
  one_error_line "$work/silent.err" "rendezvous: a port that never answers" "^error: rank 1 " "5 s \(--dist-timeout\)" \
    "the rendezvous store at 127\.0\.0\.1:$port \(MASTER_ADDR:MASTER_PORT\)"
  t0=$(date +%s.%N)
  timeout 60 "$mhc" launch --nproc 2 --master-port "$port" -- train "${small[@]}" --dist-timeout 5 --out "$work/lone" \
    > /dev/null 2> "$work/silent-launch.err" && fail "rendezvous: mhc launch on a taken port exited 0"
  took_at_most 8 "$t0" "rendezvous: mhc launch on a port another program holds"
  grep -Eiq "^error: rank 0 cannot host the rendezvous store at 127\.0\.0\.1:$port .*address already in use" \
    "$work/silent-launch.err" || fail "rendezvous: mhc launch on a taken port: $(cat "$work/silent-launch.err")"
  kill "$listener_pid"
fi

if want settings; then
  # two_ranks NAME RANK0_ARGS -- RANK1_ARGS: 2 ranks by hand on a fresh port, each with its own
  # extra flags; their exit statuses land in $work/NAME.RANK.status.
  two_ranks() {
    local name=$1 port rank=0 pids=() extra=()
    shift
    port=$(free_port)
    for arg in "$@" --; do
      if [ "$arg" != -- ]; then extra+=("$arg"); continue; fi
      RANK=$rank WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port "$mhc" train "${small[@]}" --dist-timeout 20 \
        "${extra[@]}" --out "$work/$name" > "$work/$name.$rank.log" 2> "$work/$name.$rank.err" &
      pids+=($!) rank=$((rank + 1)) extra=()
    done
    for rank in 0 1; do wait "${pids[$rank]}"; echo $? > "$work/$name.$rank.status"; done
  }
  t0=$(date +%s.%N)
  two_ranks differ --dim 32 -- --dim 64
  took_at_most 10 "$t0" "settings: ranks given --dim 32 and --dim 64 (--dist-timeout 20)"
  for rank in 0 1; do
    [ "$(cat "$work/differ.$rank.status")" -eq 2 ] || fail "settings: rank $rank exited $(cat "$work/differ.$rank.status"), not 2"
    one_error_line "$work/differ.$rank.err" "settings: rank $rank" "^error: --dim is 32 on rank 0.* but 64 on rank 1"
  done
  grep -q "on rank 1 (this rank)" "$work/differ.1.err" || fail "settings: rank 1 must name its own value"
  # The same numbers spelt differently, and run settings (--threads) that may differ: accepted.
  two_ranks alike --lr 0.001 --steps 2 -- --lr 1e-3 --steps 2 --threads 2
  for rank in 0 1; do
    [ "$(cat "$work/alike.$rank.status")" -eq 0 ] || fail "settings: --lr 0.001 vs 1e-3: rank $rank: $(cat "$work/alike.$rank.err")"
  done
  # Run settings that decide which steps the ranks meet after must agree too (issue 35, item 11):
  # they used to deadlock until the timeout, then blame a live rank.
  t0=$(date +%s.%N)
  two_ranks stops --stop-after 1 -- --stop-after 2
  took_at_most 10 "$t0" "settings: ranks given --stop-after 1 and 2 (--dist-timeout 20)"
  for rank in 0 1; do
    [ "$(cat "$work/stops.$rank.status")" -eq 2 ] || fail "settings: --stop-after: rank $rank exited $(cat "$work/stops.$rank.status"), not 2"
    one_error_line "$work/stops.$rank.err" "settings: --stop-after, rank $rank" "^error: --stop-after is 1 on rank 0.* but 2 on rank 1"
  done
fi

if want launcher; then
  # One rank dies mid-training: mhc launch stops the other at once (SIGTERM, then SIGKILL after its
  # 5 s grace), not after --dist-timeout 30, and exits with the dead rank's status (128 + 9).
  "$mhc" launch --nproc 2 -- train "${small[@]}" --steps 100000 --dist-timeout 30 --out "$work/launched" \
    > "$work/launched.log" 2>&1 &
  launcher=$!
  for _ in $(seq 1 600); do [ -f "$work/launched/metrics.jsonl" ] && [ "$(wc -l < "$work/launched/metrics.jsonl")" -ge 3 ] && break; sleep 0.1; done
  ranks=$(ps -o pid= --ppid "$launcher") victim=
  for pid in $ranks; do tr '\0' '\n' < "/proc/$pid/environ" | grep -qx RANK=1 && victim=$pid; done
  kill -KILL "$victim"
  t0=$(date +%s.%N)
  wait "$launcher"
  status=$?
  took_at_most 8 "$t0" "launcher: mhc launch ended after rank 1's SIGKILL (--dist-timeout 30)"
  [ "$status" -eq 137 ] || fail "launcher: exited $status, not rank 1's 137: $(tail -2 "$work/launched.log")"
  for pid in $ranks; do kill -0 "$pid" 2>/dev/null && fail "launcher: rank pid $pid left running"; done
  grep -q "^mhc launch: rank 1 exited with status 137; stopping the other ranks" "$work/launched.log" ||
    fail "launcher: $(tail -2 "$work/launched.log")"

  # The launcher dies (SIGKILL: no handler runs): its ranks die with it, as torchrun's workers do,
  # instead of training on as orphans that hold the --out lock (issue 35, item 14).
  "$mhc" launch --nproc 2 -- train "${small[@]}" --steps 100000 --dist-timeout 30 --out "$work/orphans" \
    > "$work/orphans.log" 2>&1 &
  launcher=$!
  for _ in $(seq 1 600); do [ -f "$work/orphans/metrics.jsonl" ] && [ "$(wc -l < "$work/orphans/metrics.jsonl")" -ge 3 ] && break; sleep 0.1; done
  ranks=$(ps -o pid= --ppid "$launcher")
  [ -n "$ranks" ] || fail "launcher death: no ranks found under the launcher"
  kill -KILL "$launcher"
  wait "$launcher" 2>/dev/null || true
  for pid in $ranks; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    ! kill -0 "$pid" 2>/dev/null || fail "launcher death: rank pid $pid still running 10 s after the launcher's SIGKILL"
  done
fi

echo "dist_cli ($only): $failures failed"
[ "$failures" -eq 0 ]
