# What the distributed CLI scripts (dist_cli.sh, pipeline_cli.sh) share; sourced after
# cli_common.sh, with `small` (the training flags of a small run) set before any function is called.

free_port() { "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# same_losses A B [FIRST] [TOLERANCE]: metrics.jsonl losses from step FIRST on agree within
# TOLERANCE relative (default 1e-5).
same_losses() {
  "$python" - "$1/metrics.jsonl" "$2/metrics.jsonl" "${3:-1}" "${4:-1e-5}" <<'PY'
import json, sys
a, b = ([json.loads(l) for l in open(p)] for p in sys.argv[1:3])
first, tolerance = int(sys.argv[3]), float(sys.argv[4])
a, b = [j for j in a if j["step"] >= first], [j for j in b if j["step"] >= first]
assert [j["step"] for j in a] == [j["step"] for j in b] and a, ("steps differ", len(a), len(b))
worst = max(abs(x["loss"] - y["loss"]) / abs(y["loss"]) for x, y in zip(a, b))
assert worst < tolerance, "losses differ by %.2e relative (tolerance %.1e)" % (worst, tolerance)
PY
}
# start_silent_listener: a program on a free port that accepts connections and never answers (in
# this shell, so that the exit trap ends it); sets listener_port and listener_pid.
start_silent_listener() {
  "$python" -c '
import socket, sys
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(16)
print(s.getsockname()[1]); sys.stdout.close()
held = []
while True: held.append(s.accept())' > "$work/listener.port" &
  listener_pid=$!
  for _ in $(seq 1 50); do [ -s "$work/listener.port" ] && break; sleep 0.1; done
  listener_port=$(cat "$work/listener.port")
}
# took_at_most LIMIT T0 WHAT: prints the seconds since T0 (date +%s.%N); fails WHAT past LIMIT.
took_at_most() {
  local took
  took=$(awk -v t0="$2" -v now="$(date +%s.%N)" 'BEGIN { printf "%.1f", now - t0 }')
  echo "$3: $took s (bound $1 s)"
  awk -v took="$took" -v limit="$1" 'BEGIN { exit !(took <= limit) }' || fail "$3 took $took s (bound: $1 s)"
}
# one_error_line FILE WHAT PATTERN…: FILE is one line, "error: …", holding every PATTERN (grep -E).
one_error_line() {
  local file=$1 what=$2
  shift 2
  [ "$(grep -c . "$file")" -eq 1 ] && grep -q "^error: " "$file" || fail "$what: not one error line: $(cat "$file")"
  for pattern in "$@"; do grep -Eq -- "$pattern" "$file" || fail "$what: no '$pattern' in: $(cat "$file")"; done
}
# survivor_exits VICTIM_RANK SIGNAL [FLAG…]: 2 ranks by hand (`mhc train` with the small settings and
# FLAGs); once training runs, VICTIM gets SIGNAL; the other rank must exit non-zero within
# --dist-timeout (+ its roll call) with one error line naming the victim.
survivor_exits() {
  local victim=$1 signal=$2 port pids=() out="$work/fail-$1-$2-$#" t0 status
  shift 2
  port=$(free_port)
  for rank in 0 1; do
    RANK=$rank WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
      "$mhc" train "${small[@]}" "$@" --steps 100000 --dist-timeout 5 --out "$out" > "$out.$rank.log" 2> "$out.$rank.err" &
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
  [ "$status" -lt 128 ] || fail "failure ($signal rank $victim): the survivor died of signal $((status - 128))"
  [ $(($(date +%s) - t0)) -le 20 ] || fail "failure ($signal rank $victim): the survivor took $(($(date +%s) - t0)) s"
  grep -Eq "^error: .*rank $victim did not answer" "$out.$((1 - victim)).err" ||
    fail "failure ($signal rank $victim): $(cat "$out.$((1 - victim)).err")"
  [ "$(grep -c . "$out.$((1 - victim)).err")" -eq 1 ] || fail "failure ($signal rank $victim): not one line: $(cat "$out.$((1 - victim)).err")"
}
