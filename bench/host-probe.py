#!/usr/bin/env python3
"""What the host did, second by second, beside a soak: did the VM get its CPUs, and how did
the disk answer.

    chrt -f 10 python3 bench/host-probe.py OUT.tsv SECONDS [DEVICE]

Every 2 ms it sleeps and measures how late it woke. Run at a real-time priority (as above), it
is woken as soon as a CPU is the VM's, whatever the vault's threads are doing: an oversleep of
many milliseconds is a pause of the whole VM (the host not running its vCPUs), not contention
inside it. Each second it writes one row: the largest oversleep, and from /proc/diskstats for
DEVICE (default vda) the deltas of writes completed, sectors written, milliseconds spent
writing, milliseconds with I/O in flight, weighted milliseconds, flushes completed and
milliseconds flushing. Costs ≈ 500 wake-ups a second, a fraction of a per cent of a core.
Bounded by SECONDS. This attributes a soak's stalls; it is no verdict.
"""
import sys
import time

out_path, duration = sys.argv[1], float(sys.argv[2])
device = sys.argv[3] if len(sys.argv) > 3 else 'vda'


def disk():
    for line in open('/proc/diskstats'):
        f = line.split()
        if f[2] == device:
            # writes, sectors written, ms writing, ms doing I/O, weighted ms, flushes, ms flushing
            return [int(f[i]) for i in (7, 9, 10, 12, 13, 18, 19)]
    raise SystemExit(f'no device {device} in /proc/diskstats')


with open(out_path, 'w') as out:
    out.write('unix_second\tmax_oversleep_ms\twrites\tsectors_written\twrite_ms\tio_ms\tweighted_ms'
              '\tflushes\tflush_ms\n')
    start = time.time()
    second, worst, before = int(start), 0.0, disk()
    while time.time() - start < duration:
        asleep = time.monotonic()
        time.sleep(0.002)
        worst = max(worst, (time.monotonic() - asleep - 0.002) * 1000)
        now = int(time.time())
        if now != second:
            after = disk()
            deltas = '\t'.join(str(b - a) for a, b in zip(before, after))
            out.write(f'{second}\t{worst:.1f}\t{deltas}\n')
            out.flush()
            second, worst, before = now, 0.0, after
