#!/usr/bin/env python3
"""Where a thread of the held vault sleeps in the kernel: its kernel stack, sampled.

    chrt -f 10 python3 bench/blocked-stacks.py THREAD SECONDS OUT [EVERY_MS]
    python3 bench/blocked-stacks.py --from OUT [EVERY_MS]     (the report again, from OUT)

THREAD: a thread name of the held vault (found by `pgrep -f -- ' --hold '`), e.g. audit-writer.
Every EVERY_MS (1) it reads the thread's state from /proc/PID/task/TID/stat and, when the
thread is in uninterruptible sleep (D: the disk, a file system lock) or asleep anywhere but a
futex or an epoll wait (S outside futex_wait/ep_poll: a page fault, a pipe), its kernel stack
(/proc/PID/task/TID/stack; root only). Writes every such sample to OUT (time, state, stack
joined by ';') and prints the stacks by samples (each ≈ EVERY_MS of the thread's time), and
the runs of consecutive blocked samples of 10 ms or more with their stack, and for the runs of
25 ms or more what their samples were doing (waiting for the data's writeback, writeback
throttling, the inode's write, the device's flush, a write). Run at real-time
priority, or the sampler itself waits for a CPU when the vault's threads are busy.
"""
import collections
import os
import subprocess
import sys
import time


def find_thread(name):
    pids = subprocess.run(['pgrep', '-f', '--', ' --hold '], capture_output=True, text=True).stdout.split()
    for pid in pids:
        for tid in os.listdir(f'/proc/{pid}/task'):
            try:
                with open(f'/proc/{pid}/task/{tid}/comm') as f:
                    if f.read().strip() == name:
                        return pid, tid
            except OSError:
                continue
    return None


def frames(stack_text):
    out = []
    for line in stack_text.splitlines():
        # "[<0>] folio_wait_bit_common+0x13c/0x350"
        fn = line.split('] ', 1)[-1].split('+', 1)[0].strip()
        if fn:
            out.append(fn)
    return out


def main():
    if sys.argv[1] == '--from':
        return from_log(sys.argv[2], float(sys.argv[3]) / 1000 if len(sys.argv) > 3 else 0.001)
    name, seconds, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    every = float(sys.argv[4]) / 1000 if len(sys.argv) > 4 else 0.001
    found = None
    deadline = time.monotonic() + 600
    while found is None and time.monotonic() < deadline:
        found = find_thread(name)
        if found is None:
            time.sleep(1)
    if found is None:
        sys.exit(f'no thread {name!r} in a held vault')
    pid, tid = found
    base = f'/proc/{pid}/task/{tid}'
    stat = os.open(base + '/stat', os.O_RDONLY)
    stack = os.open(base + '/stack', os.O_RDONLY)
    samples, blocked = 0, []
    end = time.monotonic() + seconds
    with open(out, 'w') as log:
        while time.monotonic() < end:
            try:
                s = os.pread(stat, 4096, 0).decode()
            except OSError:
                break
            state = s.rsplit(')', 1)[1].split()[0]
            samples += 1
            now = time.time()
            if state in ('D', 'S'):
                fs = frames(os.pread(stack, 16384, 0).decode())
                idle = any(f.startswith(('futex_wait', 'do_futex', 'ep_poll', 'do_epoll')) for f in fs)
                if state == 'D' or not idle:
                    blocked.append((now, state, fs))
                    log.write(f'{now:.4f} {state} {";".join(fs)}\n')
            time.sleep(every)
    print(f'{name} (tid {tid}): {samples} samples, {len(blocked)} blocked')
    report(blocked, every)


def category(fs):
    text = ';'.join(fs)
    if 'wbt_wait' in text:
        return 'writeback throttling (wbt)'
    if 'folio_wait_writeback' in text or 'wait_on_page_writeback' in text:
        return 'waiting for the data\'s writeback'
    if '__sync_dirty_buffer' in text or 'write_inode' in text:
        return 'writing the inode'
    if 'blkdev_issue_flush' in text:
        return 'the device\'s flush'
    if 'pwrite' in text or 'write_begin' in text:
        return 'a write'
    return text[:60] or '(no stack)'


def report(blocked, every):
    by_stack = collections.Counter()
    for _, state, fs in blocked:
        by_stack[(state, ';'.join(fs[:8]))] += 1
    print()
    print('| samples | state | kernel stack (innermost first) |')
    print('|---:|---|---|')
    for (state, fs), n in by_stack.most_common(15):
        print(f'| {n} | {state} | {fs} |')
    # Runs of blocked samples no more than 2.5 sampling periods apart.
    runs, current = [], []
    for b in blocked:
        if current and b[0] - current[-1][0] > 2.5 * every:
            runs.append(current)
            current = []
        current.append(b)
    if current:
        runs.append(current)
    long = [r for r in runs if r[-1][0] - r[0][0] >= 0.010]
    print()
    print(f'Blocked runs of 10 ms or more: {len(long)}')
    print()
    print('| start (unix s) | ms | most frequent stack in the run |')
    print('|---:|---:|---|')
    for r in long:
        top = collections.Counter(';'.join(fs[:6]) for _, _, fs in r).most_common(1)[0][0]
        print(f'| {r[0][0]:.3f} | {1000 * (r[-1][0] - r[0][0]):.0f} | {top} |')
    longer = [r for r in runs if r[-1][0] - r[0][0] >= 0.025]
    total = collections.Counter()
    print()
    print(f'Blocked runs of 25 ms or more: {len(longer)}, their samples by what the thread waited for:')
    print()
    print('| start (unix s) | ms | samples by cause |')
    print('|---:|---:|---|')
    for r in longer:
        causes = collections.Counter(category(fs) for _, _, fs in r)
        total.update(causes)
        print(f'| {r[0][0]:.3f} | {1000 * (r[-1][0] - r[0][0]):.0f} | '
              + ', '.join(f'{c}: {n}' for c, n in causes.most_common()) + ' |')
    print(f'| all | | ' + ', '.join(f'{c}: {n}' for c, n in total.most_common()) + ' |')


def from_log(path, every):
    blocked = []
    for line in open(path):
        parts = line.rstrip('\n').split(' ', 2)
        if len(parts) >= 2:
            fs = parts[2].split(';') if len(parts) > 2 and parts[2] else []
            blocked.append((float(parts[0]), parts[1], fs))
    print(f'{path}: {len(blocked)} blocked samples')
    report(blocked, every)


if __name__ == '__main__':
    main()
