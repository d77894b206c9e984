#!/usr/bin/env bash
# Which writes hold the SQLite writer's one turn, and for how long, per soak interval.
#
#   bench/writer-turns.sh BINARY NAME [SOAK ARGUMENTS...]
#
# BINARY: a custodia-bench build. Runs `BINARY --soak ... --config CONF --output
# /tmp/writer-turns-NAME.md` with the SOAK ARGUMENTS (default `--soak 8`; e.g. `--soak 8
# --customers 1000000`), where CONF sets only `metrics_listen` (port 9464, loopback), scrapes the
# held vault's /metrics every 5 s (an interval is printed when a scrape fell within 6 s of its
# end; the last one may not be), and prints, per interval of the soak's held load: for each
# kind of write (audit, customers, budget, other; and index, in builds before the audit index
# file of 2026-12-07) the turns per second, the time the turns held the writer per second of
# wall clock, the mean turn and the mean wait for it; the
# audit events per group commit; and the writer's busy time per second (the sum of the kinds).
# Then, per interval, the held vault's resident memory by kind (RssAnon: heap, SQLite's page
# caches among it; RssFile: mapped files) at the interval's end and its open handles on the
# database file (one per open connection).
# Then where the slow audit turns (over 25 ms) spent their time (bench/slow-turns.py).
# Histograms: `custodia_sqlite_write_seconds{kind}` and `custodia_sqlite_write_wait_seconds{kind}`
# (docs/OPERATIONS.md, "Metrics"). Settings to compare go in the environment variable
# BENCH_VAULT_CONFIG (TOML appended to CONF, e.g. `[audit]\ncommit_min_interval_us = 2000`).
# Needs curl and python3. Loopback only; bounded by the soak.
set -euo pipefail
binary=${1:?custodia-bench binary}
name=${2:?name}
shift 2
[ $# -gt 0 ] || set -- --soak 8
cd "$(dirname "$0")/.."
out=/tmp/writer-turns-$name
rm -rf "$out" "$out".*
mkdir -p "$out"
printf 'metrics_listen = "127.0.0.1:9464"\n%b\n' "${BENCH_VAULT_CONFIG:-}" >"$out.toml"
MALLOC_ARENA_MAX=2 "$binary" "$@" --config "$out.toml" --output "$out.md" >"$out.log" 2>&1 &
bench=$!
held=""
while kill -0 "$bench" 2>/dev/null; do
  now=$(date +%s)
  if [ -z "$held" ] && grep -q "holding" "$out.log"; then
    held=$now
    echo "$held" >"$out.held"
  fi
  curl -s -m 3 http://127.0.0.1:9464/metrics -o "$out/$now.prom" 2>/dev/null || rm -f "$out/$now.prom"
  # The held vault's memory by kind, and its open handles on the database file (the writer,
  # the checkpointer and each open reader connection hold one each).
  server=$(pgrep -P "$bench" | head -1 || true)
  if [ -n "$server" ] && [ -r "/proc/$server/status" ]; then
    anon=$(awk '/^RssAnon/ {print $2}' "/proc/$server/status")
    file=$(awk '/^RssFile/ {print $2}' "/proc/$server/status")
    dbfds=$(ls -l "/proc/$server/fd" 2>/dev/null | grep -c 'bench\.db$' || true)
    echo "${anon:-0} ${file:-0} ${dbfds:-0}" >"$out/$now.proc"
  fi
  sleep 5
done
wait "$bench" || { cat "$out.log" >&2; exit 1; }
[ -n "$held" ] || { echo "the soak never held its load (see $out.log)" >&2; exit 1; }
interval=$(printf '%s\n' "$@" | awk 'p {print; exit} /^--soak-interval$/ {p=1}')
python3 - "$out" "$held" "${interval:-60}" <<'PY'
import glob, os, re, sys
d, held, every = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
series = re.compile(r'(custodia_\w+?)_(sum|count)(\{[^}]*\})? (\S+)$')
def parse(path):
    values = {}
    for line in open(path):
        m = series.match(line.strip())
        if m:
            kind = re.search(r'kind="(\w+)"', m.group(3) or '')
            values[(m.group(1), m.group(2), kind and kind.group(1))] = float(m.group(4))
    return values
snaps = sorted((int(os.path.basename(p)[:-5]), p) for p in glob.glob(d + '/*.prom'))
snaps = [(t, parse(p)) for t, p in snaps]
def at(t):
    before = [s for s in snaps if s[0] <= t + 5]
    return before[-1] if before else None
kinds = ['audit', 'customers', 'budget', 'index', 'other']
print('| interval | ' + ' | '.join(f'{k}: turns/s, held ms/s, mean turn ms, mean wait ms' for k in kinds)
      + ' | audit events per commit | writer busy ms/s |')
print('|---:|' + '---|' * len(kinds) + '---:|---:|')
i = 0
while True:
    a, b = at(held + i * every), at(held + (i + 1) * every)
    if a is None or b is None or b[0] <= a[0] or b[0] < held + (i + 1) * every - 6:
        break
    dt = b[0] - a[0]
    def delta(name, part, kind=None):
        return b[1].get((name, part, kind), 0.0) - a[1].get((name, part, kind), 0.0)
    cells, busy = [], 0.0
    for k in kinds:
        n, s = delta('custodia_sqlite_write_seconds', 'count', k), delta('custodia_sqlite_write_seconds', 'sum', k)
        wn, ws = delta('custodia_sqlite_write_wait_seconds', 'count', k), delta('custodia_sqlite_write_wait_seconds', 'sum', k)
        busy += 1000 * s / dt
        cells.append(f'{n / dt:.0f}, {1000 * s / dt:.0f}, {1000 * s / max(n, 1):.2f}, {1000 * ws / max(wn, 1):.2f}')
    events = delta('custodia_audit_batch_events', 'sum') / max(delta('custodia_audit_batch_events', 'count'), 1)
    print(f'| {i + 1} | ' + ' | '.join(cells) + f' | {events:.1f} | {busy:.0f} |')
    i += 1
procs = sorted((int(os.path.basename(p)[:-5]), open(p).read().split()) for p in glob.glob(d + '/*.proc'))
if procs:
    print()
    print('| interval | RssAnon MB | RssFile MB | open handles on the database file (min–max) |')
    print('|---:|---:|---:|---:|')
    i = 0
    while True:
        inside = [v for t, v in procs if held + i * every <= t < held + (i + 1) * every and len(v) == 3]
        if not inside or held + (i + 1) * every > procs[-1][0] + 6:
            break
        last, fds = inside[-1], [int(v[2]) for v in inside]
        print(f'| {i + 1} | {int(last[0]) / 1024:.1f} | {int(last[1]) / 1024:.1f} | {min(fds)}–{max(fds)} |')
        i += 1
PY
echo
python3 bench/slow-turns.py "$out" "$held" "${interval:-60}"
echo
cat "$out.md"
