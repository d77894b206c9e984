#!/usr/bin/env bash
# The page cache's dirty total and every fsync/fdatasync on the machine, during a short soak
# (SQLite): did a sync on the commit path wait behind a burst of writeback?
#
#   bench/writeback-trace.sh BINARY NAME [MINUTES] [RATE]
#
# BINARY: a custodia-bench build. Runs `BINARY --soak MINUTES --soak-rate RATE` (default 4 min
# at 9,000 req/s, a 5-s peak measurement) with its report in /tmp/writeback-trace-NAME.md;
# samples Dirty and Writeback from /proc/meminfo twice a second; records ext4_sync_file
# enter/exit machine-wide with perf; prints per thread the syncs, their median/p90/p99 and
# summed time, every sync over 30 ms with its time, and the dirty total's median and maximum.
# The server's environment passes through (RUST_LOG=warn turns the per-request log line off).
# Needs perf with tracepoints (Debian: linux-perf) and an ext4 file system. Loopback only.
set -euo pipefail
binary=${1:?custodia-bench binary}
name=${2:?name}
minutes=${3:-4}
rate=${4:-9000}
cd "$(dirname "$0")/.."
out=/tmp/writeback-trace-$name
. bench/short-soak.sh
start_short_soak "$binary" "$out" "$minutes" "$rate"
(while kill -0 "$bench" 2>/dev/null; do
  echo "$(date +%s.%N) $(awk '/^(Dirty|Writeback):/ {printf "%s ", $2}' /proc/meminfo)"
  sleep 0.5
done) >"$out.mem" &
timeout $((minutes * 60 - 10)) perf record -a -q -e ext4:ext4_sync_file_enter \
  -e ext4:ext4_sync_file_exit -o "$out.perf" >/dev/null 2>&1 || true
wait "$bench"
perf script -i "$out.perf" -F comm,tid,time,event,trace >"$out.script" 2>/dev/null
python3 - "$out" <<'PY'
import collections, re, sys
out = sys.argv[1]
enter, syncs = {}, collections.defaultdict(list)
slow = []
for line in open(out + ".script"):
    m = re.match(r'\s*(\S.*?)\s+(\d+)\s+([\d.]+):\s+(\S+):\s*(.*)', line)
    if not m:
        continue
    comm, tid, t, ev, rest = m[1], int(m[2]), float(m[3]), m[4], m[5]
    if ev.endswith("enter"):
        ino = re.search(r'ino (\d+)', rest)
        enter[tid] = (t, ino[1] if ino else "?")
    elif ev.endswith("exit") and tid in enter:
        t0, ino = enter.pop(tid)
        ms = (t - t0) * 1000
        syncs[comm].append(ms)
        if ms > 30:
            slow.append((t, ms, comm, ino))
print("thread\tsyncs\tp50 ms\tp90 ms\tp99 ms\tsum ms")
for comm, v in sorted(syncs.items(), key=lambda kv: -len(kv[1]))[:8]:
    v.sort()
    n = len(v)
    print(f"{comm}\t{n}\t{v[n // 2]:.2f}\t{v[int(n * .9)]:.2f}\t{v[int(n * .99)]:.2f}\t{sum(v):.0f}")
start = min((s[0] for s in slow), default=0)
print(f"syncs over 30 ms: {len(slow)} (seconds from the first, ms, thread, inode)")
for t, ms, comm, ino in slow[:40]:
    print(f"  {t - start:7.2f} {ms:5.0f} {comm} {ino}")
dirty = sorted(int(l.split()[1]) for l in open(out + ".mem") if len(l.split()) > 2)
if dirty:
    print(f"dirty KB: median {dirty[len(dirty) // 2]}, max {dirty[-1]}")
PY
grep -E "^\| (interval|[0-9])" "$out.md" | cut -d'|' -f2,4,6,7,8,9
