#!/usr/bin/env bash
# How long each thread of the held vault and of the load driver waits for a CPU, during a short
# soak at a fixed rate.
#
#   bench/run-queue.sh BINARY NAME RATE [SECONDS]
#
# BINARY: a custodia-bench build. Starts `BINARY --soak 3 --soak-rate RATE` (bench/short-soak.sh;
# report in /tmp/run-queue-NAME.md), and from 30 s after the load is held it reads
# /proc/PID/task/*/schedstat of the held vault and of the driver, SECONDS (60) apart. Per thread
# name it prints: the time running and the time runnable but waiting for a CPU (both in per cent
# of one core: 100 = one thread the whole time), how many times the threads were put on a CPU
# per second, and the mean wait per time. The environment is passed on (e.g. RUST_LOG=warn).
# Needs python3 and a kernel with schedstats (/proc/PID/task/TID/schedstat). Loopback only;
# bounded by the soak (≈ 4 minutes).
set -euo pipefail
binary=${1:?custodia-bench binary}
name=${2:?name}
rate=${3:?requests per second}
seconds=${4:-60}
cd "$(dirname "$0")/.."
# shellcheck source=bench/short-soak.sh
. bench/short-soak.sh
out=/tmp/run-queue-$name
start_short_soak "$binary" "$out" 3 "$rate"
sleep 30
server=$(pgrep -P "$bench" | head -1)
[ -n "$server" ] || { echo "no held vault under the driver (pid $bench)" >&2; exit 1; }
snapshot() {
  date +%s.%N
  for pid in "$server" "$bench"; do
    for task in /proc/"$pid"/task/*; do
      printf '%s %s %s\n' "$([ "$pid" = "$server" ] && echo vault || echo driver):$(tr ' ' _ <"$task/comm")" \
        "$(basename "$task")" "$(cat "$task/schedstat")"
    done
  done
}
snapshot >"$out.before"
sleep "$seconds"
snapshot >"$out.after"
wait "$bench" || { cat "$out.log" >&2; exit 1; }
python3 - "$out.before" "$out.after" <<'PY'
import sys
def load(path):
    lines = open(path).read().split('\n')
    tasks = {}
    for line in lines[1:]:
        if line.strip():
            who, tid, run, wait, times = line.split()
            tasks[tid] = (who, int(run), int(wait), int(times))
    return float(lines[0]), tasks
t0, before = load(sys.argv[1])
t1, after = load(sys.argv[2])
span = t1 - t0
by_name = {}
for tid, (who, run, wait, times) in after.items():
    _, run0, wait0, times0 = before.get(tid, (who, 0, 0, 0))
    agg = by_name.setdefault(who, [0, 0, 0, 0])
    agg[0] += run - run0
    agg[1] += wait - wait0
    agg[2] += times - times0
    agg[3] += 1
print(f'{span:.1f} s sampled')
print('| thread (how many) | running, % of a core | waiting for a CPU, % of a core | put on a CPU per second | mean wait µs |')
print('|---|---:|---:|---:|---:|')
for who, (run, wait, times, n) in sorted(by_name.items(), key=lambda kv: -kv[1][1]):
    if times:
        print(f'| {who} ({n}) | {run / span / 1e7:.1f} | {wait / span / 1e7:.1f} | {times / span:.0f} | {wait / times / 1e3:.0f} |')
PY
grep -E '^(Peak|\| interval|\|---:|\| [0-9]|From)' "$out.md"
