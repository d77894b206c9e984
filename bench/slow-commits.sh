#!/usr/bin/env bash
# What the slow audit commits wait for: a soak with the vault's metrics scraped and every
# fsync/fdatasync of the vault traced, minute by minute (SQLite).
#
#   bench/slow-commits.sh BINARY NAME [SOAK ARGUMENTS...]
#
# BINARY: a custodia-bench build. Runs `bench/writer-turns.sh BINARY NAME SOAK ARGUMENTS` (e.g.
# `--soak 6 --soak-rate 4553 --customers 100000 --soak-peak-seconds 5`; its report in
# /tmp/writer-turns-NAME.md, its scrapes in /tmp/writer-turns-NAME/), attaches `perf trace -e
# fdatasync,fsync` to the held vault, and prints per minute of the held load: the audit group
# commits and how many took over 10 ms (`custodia_audit_commit_seconds`), then per thread and
# file (db, wal, the audit index's files) the syncs, their median, how many took over 10 and
# 30 ms and their summed time; then how many of the audit writer's syncs over 10 ms overlapped
# a sync of the database file by the WAL checkpointer, and the soak's intervals. Slow commits
# without a slow sync spent their time elsewhere (statements, waiting for a core).
# Needs perf with syscall tracepoints (Debian: linux-perf; tracefs mounted), curl and python3.
# Loopback only; bounded by the soak.
set -euo pipefail
binary=${1:?custodia-bench binary}
name=${2:?name}
shift 2
cd "$(dirname "$0")/.."
out=/tmp/writer-turns-$name
rm -f "$out".held
bench/writer-turns.sh "$binary" "$name" "$@" >"$out.turns" 2>&1 &
turns=$!
until [ -f "$out.held" ]; do
  kill -0 "$turns" 2>/dev/null || { cat "$out.turns" >&2; exit 1; }
  sleep 1
done
pid=$(pgrep -f -- "--hold" | head -1)
[ -n "$pid" ] || { echo "no held vault found" >&2; exit 1; }
# File descriptor -> file name, so that the summary can say which file was synced.
ls -l "/proc/$pid/fd" | awk '/bench\.db/ {n=$NF; sub(/.*\//, "", n); print $(NF-2), n}' >"$out.fds"
date +%s.%N >"$out.tracestart"
perf trace -e fdatasync,fsync -p "$pid" -o "$out.trace" 2>/dev/null &
trace=$!
wait "$turns" || { cat "$out.turns" >&2; exit 1; }
kill -INT "$trace" 2>/dev/null || true
wait "$trace" 2>/dev/null || true
python3 - "$out" <<'PY'
import bisect, collections, glob, os, re, sys
out = sys.argv[1]
held = float(open(out + '.held').read())
traced = float(open(out + '.tracestart').read())
names = dict(line.split() for line in open(out + '.fds'))
def short(fd):
    n = names.get(fd, 'fd ' + fd)
    return {'bench.db': 'db', 'bench.db-wal': 'wal'}.get(n, n.replace('bench.db-', ''))
syncs = []  # (ms since the trace started, ms, thread, file)
for line in open(out + '.trace'):
    m = re.match(r'\s*([\d.]+) \(\s*([\d.]+) ms\): (\S+?)/\d+ \w+\(fd: (\d+)', line)
    if m:
        syncs.append((float(m[1]), float(m[2]), m[3], short(m[4])))
def minute(ms):
    return int((traced + ms / 1000 - held) // 60)
per = collections.defaultdict(lambda: collections.defaultdict(list))
for ms, took, thread, file in syncs:
    per[minute(ms)][(thread, file)].append(took)
scrapes = []
for path in glob.glob(out + '/*.prom'):
    values = {}
    for line in open(path):
        m = re.match(r'custodia_audit_commit_seconds_(?:bucket\{le="([^"]+)"\}|count) (\S+)', line)
        if m:
            values[m[1] or 'count'] = float(m[2])
    scrapes.append((int(os.path.basename(path)[:-5]), values))
scrapes.sort(key=lambda s: s[0])
def at(t):
    before = [s for s in scrapes if s[0] <= t + 5]
    return before[-1] if before else None
print('| minute | audit commits | over 10 ms | syncs by thread: file (count, median ms, > 10 ms, > 30 ms, summed s) |')
print('|---:|---:|---:|---|')
for i in sorted(k for k in per if k >= 0):
    a, b = at(held + 60 * i), at(held + 60 * (i + 1))
    if not (a and b and b[0] > a[0] and b[0] >= held + 60 * (i + 1) - 6):
        continue
    commits = b[1].get('count', 0) - a[1].get('count', 0)
    slow = commits - (b[1].get('0.01', 0) - a[1].get('0.01', 0))
    cells = []
    for (thread, file), took in sorted(per[i].items(), key=lambda kv: -len(kv[1])):
        if len(took) < 3:
            continue
        took.sort()
        cells.append(f'{thread}: {file} ({len(took)}, {took[len(took) // 2]:.2f}, {sum(t > 10 for t in took)}, '
                     f'{sum(t > 30 for t in took)}, {sum(took) / 1000:.1f})')
    print(f'| {i + 1} | {commits:.0f} | {slow:.0f} | ' + '; '.join(cells) + ' |')
checkpoints = sorted((ms, ms + took) for ms, took, thread, file in syncs if thread.startswith('wal-check') and file == 'db')
starts = [c[0] for c in checkpoints]
def overlaps(ms, took):
    i = bisect.bisect_right(starts, ms + took)
    return any(end > ms for begin, end in checkpoints[max(0, i - 64):i])
slow = [(ms, took) for ms, took, thread, file in syncs if thread.startswith('audit-wr') and took > 10]
print(f'\nThe audit writer\'s syncs over 10 ms: {len(slow)}, of which {sum(overlaps(*s) for s in slow)} '
      'overlapped a sync of the database file by the WAL checkpointer.')
PY
grep -E "^\| (interval|[0-9])" "$out.md" | cut -d'|' -f2,4,6,7,8,9,13,14
grep "largest distance" "$out.md"
