#!/usr/bin/env bash
# Whose heap a held vault's anonymous memory is, sample by sample, beside a running soak.
#
#   bench/heap-maps.sh NAME [EVERY]
#
# Start it next to a soak (e.g. `bench/writer-turns.sh ...` in another shell). It waits for the
# held vault (the process whose command line matches HOLD_PATTERN, default ` --hold `), then
# every EVERY seconds (default 30) until that process exits saves its /proc/PID/smaps to
# /tmp/heap-maps-NAME/SECONDS.smaps, and at the end prints, per sample, the anonymous resident
# memory split by who mapped it:
#
# - glibc heap: the main arena (`[heap]`) and glibc's other arenas (a 64-MiB-aligned 64-MiB
#   reservation: a read-write part and its PROT_NONE rest). Only C code allocates there: the
#   bundled SQLite (page caches, statements) and any other C library; Rust's allocations go to
#   jemalloc.
# - thread stacks: a read-write mapping right above a 4-KiB PROT_NONE guard page.
# - jemalloc and the rest: every other anonymous mapping (jemalloc's extents, which it maps
#   read-write in large runs).
#
# Reading smaps takes the vault's memory-map lock for a few milliseconds; at one read in 30 s
# that is far below the soak's per-minute noise, but it is a perturbation: this attributes
# memory, it is no verdict. Needs python3. Bounded by the soak it watches.
set -euo pipefail
name=${1:?name}
every=${2:-30}
out=/tmp/heap-maps-$name
rm -rf "$out"
mkdir -p "$out"
server=""
while [ -z "$server" ]; do
  server=$(pgrep -f -- "${HOLD_PATTERN:- --hold }" | head -1 || true)
  [ -n "$server" ] || sleep 1
done
start=$(date +%s)
echo "watching the held vault, pid $server; samples in $out" >&2
while [ -r "/proc/$server/smaps" ]; do
  now=$(date +%s)
  cat "/proc/$server/smaps" >"$out/$((now - start)).smaps" 2>/dev/null || break
  sleep "$every"
done
python3 - "$out" <<'PY'
import glob, os, re, sys
d = sys.argv[1]
head = re.compile(r'^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ (\d+)\s*(.*)$')
ARENA = 64 << 20

def maps(path):
    out, cur = [], None
    for line in open(path):
        m = head.match(line)
        if m:
            cur = {'lo': int(m[1], 16), 'hi': int(m[2], 16), 'perm': m[3], 'inode': int(m[4]),
                   'name': m[5].strip(), 'anon': 0}
            out.append(cur)
        elif cur is not None and line.startswith('Anonymous:'):
            cur['anon'] = int(line.split()[1])
    return out

def split(ms):
    heap = arenas = stacks = rest = 0
    arena_spans = set()
    for i, m in enumerate(ms):
        # A glibc arena: a 64-MiB-aligned start, its read-write part followed by PROT_NONE, 64 MiB in all.
        if m['lo'] % ARENA == 0 and m['perm'].startswith('rw') and m['inode'] == 0 and not m['name']:
            end = m['hi']
            if i + 1 < len(ms) and ms[i + 1]['lo'] == end and ms[i + 1]['perm'].startswith('---'):
                end = ms[i + 1]['hi']
            if end - m['lo'] == ARENA:
                arena_spans.add(i)
    for i, m in enumerate(ms):
        kb = m['anon']
        if not kb:
            continue
        if m['name'] == '[heap]':
            heap += kb
        elif i in arena_spans:
            arenas += kb
        elif m['name'] == '[stack]' or (i > 0 and ms[i - 1]['perm'].startswith('---')
                                         and ms[i - 1]['hi'] == m['lo']
                                         and ms[i - 1]['hi'] - ms[i - 1]['lo'] == 4096):
            stacks += kb
        else:
            rest += kb
    return heap, arenas, stacks, rest

rows = sorted(glob.glob(os.path.join(d, '*.smaps')), key=lambda p: int(os.path.basename(p).split('.')[0]))
print('| seconds watched | anonymous MB | glibc main arena MB | glibc other arenas MB | thread stacks MB | jemalloc and the rest MB | mappings |')
print('|---:|---:|---:|---:|---:|---:|---:|')
for p in rows:
    ms = maps(p)
    if not ms:
        continue
    h, a, s, r = split(ms)
    t = h + a + s + r
    print(f'| {os.path.basename(p).split(".")[0]} | {t/1024:.1f} | {h/1024:.1f} | {a/1024:.1f} | {s/1024:.1f} | {r/1024:.1f} | {len(ms)} |')
PY
