#!/usr/bin/env bash
# What a request costs the vault under a closed loop and under the soak's paced load, in one
# run: server CPU and context switches per request, and the driver's.
#
#   bench/paced-vs-closed.sh BINARY NAME [RATE] [CUSTOMERS]
#
# BINARY: a custodia-bench build. Runs `BINARY --soak 2 --soak-rate RATE (4553)
# --soak-peak-seconds 60 --customers CUSTOMERS (100000)` with its report in
# /tmp/paced-vs-closed-NAME.md, and reads /proc of the held vault and of the driver (CPU:
# utime + stime; context switches: voluntary and involuntary, summed over threads) over 30 s in
# the middle of the closed-loop peak measurement and over 60 s of the paced hold. Requests in the
# closed-loop window are counted at the peak's mean rate (it is measured over the whole 60 s);
# in the paced window at RATE (every request due is completed, see the report). Needs python3.
# Loopback only; about 5 minutes.
set -euo pipefail
binary=${1:?custodia-bench binary}
name=${2:?name}
rate=${3:-4553}
customers=${4:-100000}
cd "$(dirname "$0")/.."
out=/tmp/paced-vs-closed-$name
rm -f "$out".*
MALLOC_ARENA_MAX=2 "$binary" --soak 2 --soak-rate "$rate" --soak-peak-seconds 60 --customers "$customers" \
  --output "$out.md" >"$out.log" 2>&1 &
bench=$!
# "time cpu_ticks voluntary involuntary" of a process, summed over its threads.
snapshot() {
  local pid=$1 v=0 n=0 status
  for status in /proc/"$pid"/task/*/status; do
    read -r a b < <(awk '/^voluntary_ctxt/ {v=$2} /^nonvoluntary_ctxt/ {n=$2} END {print v+0, n+0}' "$status" 2>/dev/null || echo 0 0)
    v=$((v + a))
    n=$((n + b))
  done
  echo "$(date +%s.%N) $(awk '{print $14 + $15}' /proc/"$pid"/stat) $v $n"
}
until grep -q "measuring the peak" "$out.log"; do
  kill -0 "$bench" 2>/dev/null || { cat "$out.log" >&2; exit 1; }
  sleep 0.5
done
sleep 1
server=$(pgrep -P "$bench" | head -1)
[ -n "$server" ] || { echo "no held vault under the driver (pid $bench)" >&2; exit 1; }
sleep 19
closed_a="$(snapshot "$server") $(snapshot "$bench")"
sleep 30
closed_b="$(snapshot "$server") $(snapshot "$bench")"
until grep -q "holding" "$out.log"; do sleep 0.5; done
sleep 20
paced_a="$(snapshot "$server") $(snapshot "$bench")"
sleep 60
paced_b="$(snapshot "$server") $(snapshot "$bench")"
wait "$bench"
peak=$(sed -n 's/.*peak \([0-9]*\) req\/s, holding.*/\1/p' "$out.log")
hz=$(getconf CLK_TCK)
python3 - "$hz" "$peak" "$rate" "$closed_a" "$closed_b" "$paced_a" "$paced_b" <<'PY'
import sys
hz, peak, rate = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
snap = [list(map(float, a.split())) for a in sys.argv[4:8]]
print('| load | req/s | requests in the window | server CPU µs/req | server switches/req (voluntary + involuntary) | server cores busy | driver CPU µs/req | driver switches/req |')
print('|---|---:|---:|---:|---:|---:|---:|---:|')
for label, r, a, b in (('closed loop, 64 connections', peak, snap[0], snap[1]), ('paced', rate, snap[2], snap[3])):
    dt = b[0] - a[0]
    n = r * dt
    print(f'| {label} | {r:.0f} | {n:.0f} | {(b[1] - a[1]) / hz * 1e6 / n:.0f} | {(b[2] - a[2]) / n:.2f} + {(b[3] - a[3]) / n:.2f} '
          f'| {(b[1] - a[1]) / hz / dt:.2f} | {(b[5] - a[5]) / hz * 1e6 / n:.0f} | {(b[6] - a[6] + b[7] - a[7]) / n:.2f} |')
PY
grep -E "^\| (interval|[0-9])" "$out.md" | cut -d'|' -f2,4,6,7,9,14
