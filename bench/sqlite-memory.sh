#!/usr/bin/env bash
# How much of a held vault's heap is SQLite's, minute by minute, during a soak.
#
#   bench/sqlite-memory.sh BINARY NAME [SOAK ARGUMENTS...]
#
# BINARY: a custodia-bench build with its symbols (release builds keep them). Runs `BINARY
# --soak ... --output /tmp/sqlite-memory-NAME.md` with the SOAK ARGUMENTS (default `--soak 12
# --soak-rate 8837 --customers 1000000`: a fixed rate, so that only the 60-s closed-loop peak
# measurement runs before the hold), and every `EVERY` seconds (environment, default 60) while
# the vault holds its load prints: seconds since the hold began, the vault's RssAnon (heap) in
# MB, and what the bundled SQLite has allocated (what `sqlite3_memory_used()` returns: page
# caches, schemas and prepared statements of every connection), read by attaching gdb for a
# moment. The rest of the heap is the vault's own and the allocator's. The pause for gdb (well
# under a second) shows in that minute's p99: this run attributes memory; it is no verdict.
# Needs gdb. Loopback only; bounded by the soak.
set -euo pipefail
binary=${1:?custodia-bench binary}
name=${2:?name}
shift 2
[ $# -gt 0 ] || set -- --soak 12 --soak-rate 8837 --customers 1000000
command -v gdb >/dev/null || { echo "needs gdb" >&2; exit 1; }
cd "$(dirname "$0")/.."
out=/tmp/sqlite-memory-$name
rm -f "$out".*
MALLOC_ARENA_MAX=2 "$binary" "$@" --output "$out.md" >"$out.log" 2>&1 &
bench=$!
every=${EVERY:-60}
held=""
echo "| seconds held | RssAnon MB | SQLite allocated MB | the rest MB |"
echo "|---:|---:|---:|---:|"
while kill -0 "$bench" 2>/dev/null; do
  if [ -z "$held" ]; then
    grep -q "holding" "$out.log" && held=$(date +%s)
    sleep 1
    continue
  fi
  server=$(pgrep -P "$bench" | head -1 || true)
  if [ -n "$server" ] && [ -r "/proc/$server/status" ]; then
    anon=$(awk '/^RssAnon/ {print $2}' "/proc/$server/status")
    # The bundled SQLite's status counters (sqlite3Stat.nowValue[SQLITE_STATUS_MEMORY_USED], the
    # first 8 bytes), read from memory: calling sqlite3_memory_used() in the inferior fails on
    # these VMs ("Couldn't write extended state status").
    used=$(timeout 20 gdb -p "$server" -batch -ex 'x/1gd &sqlite3Stat' 2>/dev/null |
      awk '/<sqlite3Stat>:/ {print $3}' || true)
    if [ -n "$anon" ] && [ -n "$used" ]; then
      awk -v t=$(($(date +%s) - held)) -v a="$anon" -v u="$used" \
        'BEGIN { printf "| %d | %.1f | %.1f | %.1f |\n", t, a / 1024, u / 1048576, a / 1024 - u / 1048576 }'
    fi
  fi
  sleep "$every"
done
wait "$bench" || { cat "$out.log" >&2; exit 1; }
