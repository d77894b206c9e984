#!/usr/bin/env python3
"""The disk's own floor under the soak's p99: a paced load whose only work is a group commit.

    python3 bench/disk-floor.py [--rate 4553] [--minutes 10] [--dir /tmp] [--event-bytes 600]

Requests are due at evenly spaced times (`--rate` a second, as the soak's paced load). One
thread does what the vault's audit writer does and nothing else: it takes every request that is
due, writes its event (`--event-bytes`, rounded up to 4 KiB pages per commit) into a 16 MiB
file that was written and synced beforehand (as SQLite's WAL, overwritten in place), calls
`fdatasync`, and counts each request's latency from its due time to the end of that sync. No
CPU work, no database, no network: a vault that spent no time of its own would see exactly
these latencies. Per interval (`--interval`, 60 s) it prints the commits, the slowest sync, the
commits over 10 and 30 ms, the p50/p99 from the due time and the share of the machine's CPU
time the host took (steal, /proc/stat: capacity the vault would have lost that minute), then the soak's strict p99
verdict (largest distance of an interval's p99 from the mean, from interval 2 on) computed the
same way as `custodia-bench --soak`. The file is in `--dir` (default: the temporary directory,
where the soak's database lives). Bounded in time; writes only its one file.
"""

import argparse
import array
import math
import os
import tempfile
import time

PAGE = 4096
RING = 16 * 1024 * 1024


def cpu_times():
    """(steal, total) jiffies of the machine, from /proc/stat (0, 1 where it is not there)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return fields[7] if len(fields) > 7 else 0, sum(fields[:8])
    except OSError:
        return 0, 1


def percentile(values, q):
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(math.ceil(q * len(ordered))) - 1)]


def spread(values):
    mean = sum(values) / max(len(values), 1)
    return max(abs(v - mean) / max(mean, 1e-9) * 100.0 for v in values) if values else 0.0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rate", type=float, default=4553.0)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--interval", type=float, default=60.0)
    p.add_argument("--event-bytes", type=int, default=600)
    p.add_argument("--dir", default=tempfile.gettempdir())
    a = p.parse_args()

    fd, path = tempfile.mkstemp(prefix="disk-floor-", dir=a.dir)
    try:
        zeros = bytes(RING)
        os.pwrite(fd, zeros, 0)
        os.fsync(fd)
        page = bytes(range(256)) * (PAGE // 256)
        intervals = int(a.minutes * 60 / a.interval)
        lat = [array.array("d") for _ in range(intervals)]
        syncs = [array.array("d") for _ in range(intervals)]
        start = time.monotonic() + 0.5
        end = start + intervals * a.interval
        nxt, off = 0, 0
        marks = [None] * (intervals + 1)
        while True:
            now = time.monotonic()
            if now >= end:
                break
            due = int((now - start) * a.rate) + 1 if now >= start else 0
            if due <= nxt:
                time.sleep(max(0.0, min(start + nxt / a.rate - now, 0.001)))
                continue
            pages = max(1, math.ceil((due - nxt) * a.event_bytes / PAGE))
            data = page * pages
            if off + len(data) > RING:
                off = 0
            os.pwrite(fd, data[: RING - off], off)
            off += len(data)
            t0 = time.monotonic()
            os.fdatasync(fd)
            done = time.monotonic()
            k = min(int((now - start) / a.interval), intervals - 1)
            if marks[k] is None:
                marks[k] = cpu_times()
            syncs[k].append(done - t0)
            for i in range(nxt, due):
                d = start + i / a.rate
                lat[min(int((d - start) / a.interval), intervals - 1)].append(done - d)
            nxt = due
        marks[intervals] = cpu_times()
    finally:
        os.close(fd)
        os.unlink(path)

    print(f"disk floor: {a.rate:.0f} requests/s due evenly, one fdatasync per group commit, "
          f"{a.event_bytes} B per event, file in {a.dir}\n")
    print("| interval | commits/s | events per commit | syncs > 10 ms | syncs > 30 ms | slowest sync ms "
          "| p50 ms | p99 ms | CPU stolen by the host |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    p99s = []
    for k in range(intervals):
        s, l = syncs[k], lat[k]
        p99 = percentile(l, 0.99) * 1000
        p99s.append(p99)
        a0, b0 = marks[k], next((m for m in marks[k + 1:] if m), None)
        steal = f"{(b0[0] - a0[0]) / max(b0[1] - a0[1], 1) * 100:.1f} %" if a0 and b0 else "-"
        print(f"| {k + 1} | {len(s) / a.interval:.0f} | {len(l) / max(len(s), 1):.1f} "
              f"| {sum(1 for x in s if x > 0.010)} | {sum(1 for x in s if x > 0.030)} "
              f"| {max(s, default=0) * 1000:.1f} | {percentile(l, 0.5) * 1000:.2f} | {p99:.2f} | {steal} |")
    steady = p99s[1:] if len(p99s) > 2 else p99s
    s = spread(steady)
    print(f"\nFrom interval 2 on: p99 {min(steady):.2f}–{max(steady):.2f} ms, largest distance from the mean "
          f"{s:.1f} % ({'flat' if s <= 10 else 'NOT flat'} within 10 %).")


if __name__ == "__main__":
    main()
