#!/usr/bin/env python3
"""Where the SQLite writer's slow turns (over 25 ms) spent their time, per soak interval.

    python3 bench/slow-turns.py DIR HELD [EVERY] [KIND]

DIR: the /metrics scrapes of bench/writer-turns.sh (/tmp/writer-turns-NAME, one TIME.prom per
5 s); HELD: the unix time the load was held (/tmp/writer-turns-NAME.held); EVERY: the soak's
interval in seconds (60); KIND: the write kind (audit). Prints per interval: the slow turns,
their summed time per second of wall clock, and that time split two ways, from the vault's
histograms `custodia_sqlite_slow_write_step_seconds{kind,step}` (begin, statements, commit)
and `custodia_sqlite_slow_write_thread_seconds{kind,state}` (running on a CPU, runnable:
waiting for a CPU, blocked: on the disk or a lock), then the same over the whole hold.
Builds before these histograms print nothing.
"""
import glob
import os
import re
import sys

SERIES = re.compile(r'(custodia_sqlite_slow_write_(?:step|thread)_seconds)_(sum|count)\{([^}]*)\} (\S+)$')
STEPS = ['begin', 'statements', 'commit']
STATES = ['running', 'runnable', 'blocked']


def parse(path, kind):
    values = {}
    for line in open(path):
        m = SERIES.match(line.strip())
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3)))
        if labels.get('kind') != kind:
            continue
        part = labels.get('step') or labels.get('state')
        values[(m.group(1).split('_')[-2], m.group(2), part)] = float(m.group(4))
    return values


def main():
    d, held = sys.argv[1], float(sys.argv[2])
    every = float(sys.argv[3]) if len(sys.argv) > 3 else 60.0
    kind = sys.argv[4] if len(sys.argv) > 4 else 'audit'
    snaps = sorted((int(os.path.basename(p)[:-5]), p) for p in glob.glob(d + '/*.prom'))
    snaps = [(t, parse(p, kind)) for t, p in snaps]
    if not any(v for _, v in snaps):
        print(f'no slow-turn histograms for kind {kind} in {d} (a build before them, or no slow turn)')
        return

    def at(t):
        before = [s for s in snaps if s[0] <= t + 5]
        return before[-1] if before else None

    def row(label, a, b):
        dt = b[0] - a[0]

        def delta(group, part_, p):
            return b[1].get((group, part_, p), 0.0) - a[1].get((group, part_, p), 0.0)

        turns = delta('step', 'count', 'commit')
        steps = {s: delta('step', 'sum', s) for s in STEPS}
        states = {s: delta('thread', 'sum', s) for s in STATES}
        total = sum(steps.values())
        share = lambda v, of: f'{100 * v / of:.0f} %' if of > 0 else '–'
        cells = [f'{turns / dt * 60:.1f}', f'{1000 * total / max(turns, 1):.1f}']
        cells += [share(steps[s], total) for s in STEPS]
        cells += [share(states[s], sum(states.values())) for s in STATES]
        print(f'| {label} | ' + ' | '.join(cells) + ' |')

    print(f'Slow {kind} turns (over 25 ms):')
    print()
    print('| interval | slow turns a minute | mean slow turn ms | begin | statements | commit '
          '| running | runnable (waiting for a CPU) | blocked (disk, locks) |')
    print('|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
    i = 0
    while True:
        a, b = at(held + i * every), at(held + (i + 1) * every)
        if a is None or b is None or b[0] <= a[0] or b[0] < held + (i + 1) * every - 6:
            break
        row(str(i + 1), a, b)
        i += 1
    first, last = at(held), snaps[-1]
    if first and last[0] > first[0]:
        row('hold', first, last)


if __name__ == '__main__':
    main()
