#!/usr/bin/env python3
"""How much of a soak's p99 spread the machine's own speed explains, per results file.

    bench/soak-spread.py bench/results/*soak*.md

For each soak report written by `custodia-bench --soak` (files without a per-interval table with
p99 and server CPU per request are skipped), over the judged intervals (from the second on, as
the soak's verdict): the p99 range and its largest distance from the mean (the strict verdict),
the same distance for the server's CPU per request (a proxy for the machine's speed that
minute: the same work costs more CPU when the host delivers less), the correlation of the two
(of their logarithms), and the elasticity: the slope of ln p99 on ln CPU per request, i.e. by
how many per cent the p99 moved for each per cent the cost per request moved. A p99 flat within
10 % needs roughly (CPU spread) x (elasticity) <= 10 %.
"""
import math
import re
import statistics
import sys


def intervals(path):
    header, rows = None, []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("| interval |"):
                cells = [c.strip() for c in line.strip().strip("|").split("|")]
                # Only the soak's own per-interval table; other tables (writer turns) end it.
                header = cells if "p99 ms" in cells and not rows else None
            elif header and re.match(r"\| \d+ \|", line):
                cells = [c.strip() for c in line.strip().strip("|").split("|")]
                if len(cells) == len(header):
                    rows.append(dict(zip(header, cells)))
    return header or [], rows


def spread(values):
    mean = statistics.mean(values)
    return max(abs(v - mean) for v in values) / mean * 100


def main(paths):
    print("| file | judged intervals | p99 ms | p99 spread | CPU/req spread | r (ln) | elasticity | idle % |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for path in paths:
        if path.endswith("-writer.md"):
            continue
        header, rows = intervals(path)
        if "p99 ms" not in header or "server CPU µs/req" not in header or len(rows) < 4:
            continue
        judged = rows[1:]
        p99 = [float(r["p99 ms"]) for r in judged]
        cpu = [float(r["server CPU µs/req"]) for r in judged]
        idle = [float(r["machine idle %"]) for r in judged] if "machine idle %" in header else []
        lp, lc = [math.log(v) for v in p99], [math.log(v) for v in cpu]
        try:
            r = statistics.correlation(lc, lp)
            slope = statistics.linear_regression(lc, lp).slope
        except statistics.StatisticsError:
            r = slope = float("nan")
        name = path.rsplit("/", 1)[-1]
        idle_text = f"{min(idle):.1f}–{max(idle):.1f}" if idle else "—"
        print(
            f"| {name} | {len(judged)} | {min(p99):.1f}–{max(p99):.1f} | {spread(p99):.0f} % | "
            f"{spread(cpu):.1f} % | {r:.2f} | {slope:.1f} | {idle_text} |"
        )


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
