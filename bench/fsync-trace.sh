#!/usr/bin/env bash
# Which thread of the vault waits on which fsync, during a short soak (SQLite).
#
#   bench/fsync-trace.sh BINARY NAME [MINUTES] [RATE]
#
# BINARY: a custodia-bench build. Runs `BINARY --soak MINUTES --soak-rate RATE` (default 3 min
# at 11,000 req/s, a 5-s peak measurement) with its report in /tmp/fsync-trace-NAME.md, attaches
# `perf trace -e fdatasync,fsync` to the vault's process for the soak, and prints per thread and
# file (the database file, its WAL) how many syncs, their median, p99, longest and summed time,
# then the soak's intervals. The writer's syncs of the database file (the file, not the WAL,
# from the audit-writer (or, before 2026-12-06, create-queue) or blocking-pool threads) are checkpoints on the commit
# path: every commit waits behind them.
# Needs perf with syscall tracepoints (Debian: linux-perf). Loopback only; bounded in time.
set -euo pipefail
binary=${1:?custodia-bench binary}
name=${2:?name}
minutes=${3:-3}
rate=${4:-11000}
cd "$(dirname "$0")/.."
out=/tmp/fsync-trace-$name
. bench/short-soak.sh
start_short_soak "$binary" "$out" "$minutes" "$rate"
pid=$(pgrep -f -- "--hold" | head -1)
[ -n "$pid" ] || { echo "no vault process found" >&2; exit 1; }
# File descriptor -> file name, so that the summary can say "database" or "WAL".
ls -l "/proc/$pid/fd" | awk '/bench\.db/ {n=$NF; sub(/.*\//, "", n); print $(NF-2), n}' >"$out.fds"
timeout $((minutes * 60 - 10)) perf trace -e fdatasync,fsync -p "$pid" -o "$out.trace" 2>/dev/null || true
wait "$bench"
python3 - "$out.trace" "$out.fds" <<'PY'
import collections, re, sys
names = dict(line.split() for line in open(sys.argv[2]))
syncs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    m = re.match(r'\s*[\d.]+ \(\s*([\d.]+) ms\): (\S+?)/\d+ \w+\(fd: (\d+)', line)
    if m:
        syncs[(m[2], names.get(m[3], "fd " + m[3]))].append(float(m[1]))
print("thread\tfile\tsyncs\tp50 ms\tp99 ms\tmax ms\tsum ms")
for (thread, file), v in sorted(syncs.items(), key=lambda kv: -len(kv[1])):
    v.sort()
    n = len(v)
    print(f"{thread}\t{file}\t{n}\t{v[n // 2]:.2f}\t{v[int(n * 0.99)]:.2f}\t{v[-1]:.1f}\t{sum(v):.0f}")
PY
grep -E "^\| (interval|[0-9])" "$out.md" | cut -d'|' -f2,4,6,7,8,9,10
grep "largest distance" "$out.md"
