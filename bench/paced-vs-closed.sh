#!/usr/bin/env bash
# What a request costs the vault under a closed loop and under the soak's paced load, in one
# run: server CPU and context switches per request, and the driver's.
#
#   bench/paced-vs-closed.sh BINARY NAME [RATE] [CUSTOMERS] [CONFIG]
#
# BINARY: a custodia-bench build. Runs `BINARY --soak 2 --soak-rate RATE (4553)
# --soak-peak-seconds 60 --customers CUSTOMERS (100000)` with its report in
# /tmp/paced-vs-closed-NAME.md, and reads /proc of the held vault and of the driver (CPU:
# utime + stime; context switches: voluntary and involuntary, summed over threads) over 30 s in
# the middle of the closed-loop peak measurement and over 60 s of the paced hold. Requests in the
# closed-loop window are counted at the peak's mean rate (it is measured over the whole 60 s);
# in the paced window at RATE (every request due is completed, see the report). Then the same per
# thread of the vault, by thread name: which threads are woken per request. Needs python3.
# CONFIG: a vault configuration file for the held vault (e.g. one setting to compare). Loopback
# only; about 5 minutes.
set -euo pipefail
binary=${1:?custodia-bench binary}
name=${2:?name}
rate=${3:-4553}
customers=${4:-100000}
config=()
[ -n "${5:-}" ] && config=(--config "$5")
cd "$(dirname "$0")/.."
out=/tmp/paced-vs-closed-$name
rm -f "$out".*
MALLOC_ARENA_MAX=2 "$binary" --soak 2 --soak-rate "$rate" --soak-peak-seconds 60 --customers "$customers" \
  "${config[@]}" --output "$out.md" >"$out.log" 2>&1 &
bench=$!
# One line per thread of a process: "time tid name cpu_ticks voluntary involuntary".
snapshot() {
  local pid=$1 now task
  now=$(date +%s.%N)
  for task in /proc/"$pid"/task/*; do
    awk -v now="$now" -v tid="${task##*/}" -v name="$(tr ' ' '_' <"$task/comm" 2>/dev/null)" \
      -v ticks="$(awk '{print $14 + $15}' "$task/stat" 2>/dev/null)" \
      '/^voluntary_ctxt/ {v=$2} /^nonvoluntary_ctxt/ {n=$2} END {print now, tid, name, ticks + 0, v + 0, n + 0}' \
      "$task/status" 2>/dev/null || true
  done
}
until grep -q "measuring the peak" "$out.log"; do
  kill -0 "$bench" 2>/dev/null || { cat "$out.log" >&2; exit 1; }
  sleep 0.5
done
sleep 1
server=$(pgrep -P "$bench" | head -1)
[ -n "$server" ] || { echo "no held vault under the driver (pid $bench)" >&2; exit 1; }
sleep 19
snapshot "$server" >"$out.closed-a.server"; snapshot "$bench" >"$out.closed-a.driver"
sleep 30
snapshot "$server" >"$out.closed-b.server"; snapshot "$bench" >"$out.closed-b.driver"
until grep -q "holding" "$out.log"; do sleep 0.5; done
sleep 20
snapshot "$server" >"$out.paced-a.server"; snapshot "$bench" >"$out.paced-a.driver"
sleep 60
snapshot "$server" >"$out.paced-b.server"; snapshot "$bench" >"$out.paced-b.driver"
wait "$bench"
peak=$(sed -n 's/.*peak \([0-9]*\) req\/s, holding.*/\1/p' "$out.log")
hz=$(getconf CLK_TCK)
python3 - "$hz" "$peak" "$rate" "$out" <<'PY'
import collections, sys
hz, peak, rate, out = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
def load(window, who):
    rows = [line.split() for line in open(f'{out}.{window}.{who}')]
    return float(rows[0][0]), {r[1]: (r[2], float(r[3]), float(r[4]), float(r[5])) for r in rows}
def delta(phase, who):
    (ta, a), (tb, b) = load(phase + '-a', who), load(phase + '-b', who)
    by_name = collections.defaultdict(lambda: [0.0, 0.0, 0.0, 0])
    for tid, (name, ticks, vol, inv) in b.items():
        was = a.get(tid, (name, 0.0, 0.0, 0.0))  # a thread started within the window counts whole
        d = by_name[name]
        d[0] += ticks - was[1]; d[1] += vol - was[2]; d[2] += inv - was[3]; d[3] += 1
    return tb - ta, by_name
phases = (('closed loop, 64 connections', 'closed', peak), ('paced', 'paced', rate))
print('| load | req/s | requests in the window | server CPU µs/req | server switches/req (voluntary + involuntary) | server cores busy | driver CPU µs/req | driver switches/req |')
print('|---|---:|---:|---:|---:|---:|---:|---:|')
for label, phase, r in phases:
    dt, server = delta(phase, 'server')
    _, driver = delta(phase, 'driver')
    n = r * dt
    sv = [sum(d[i] for d in server.values()) for i in range(3)]
    dv = [sum(d[i] for d in driver.values()) for i in range(3)]
    print(f'| {label} | {r:.0f} | {n:.0f} | {sv[0] / hz * 1e6 / n:.0f} | {sv[1] / n:.2f} + {sv[2] / n:.2f} '
          f'| {sv[0] / hz / dt:.2f} | {dv[0] / hz * 1e6 / n:.0f} | {(dv[1] + dv[2]) / n:.2f} |')
print('\nPer thread of the vault (by name; how many), per request: CPU µs, voluntary + involuntary switches.\n')
print('| thread | ' + ' | '.join(label for label, _, _ in phases) + ' |')
print('|---|' + '---:|' * len(phases))
per = [(delta(phase, 'server')[1], r * delta(phase, 'server')[0]) for _, phase, r in phases]
for name in sorted({k for d, _ in per for k in d}, key=lambda k: -per[1][0].get(k, [0])[0]):
    cells = []
    for d, n in per:
        v = d.get(name)
        cells.append(f'{v[0] / hz * 1e6 / n:.1f} µs, {v[1] / n:.2f} + {v[2] / n:.2f} ({v[3]})' if v else '-')
    print(f'| {name} | ' + ' | '.join(cells) + ' |')
PY
grep -E "^\| (interval|[0-9])" "$out.md" | cut -d'|' -f2,4,6,7,9,14
