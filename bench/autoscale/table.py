#!/usr/bin/env python3
"""Prints scripts/bench_autoscale.sh's results as a markdown table.

  table.py RESULTS

RESULTS has one JSON array per line, one line per run of
bench/autoscale_replay --json (an object per pool: p50_ms, p99_ms, max_ms,
timeouts, session_seconds, peak, scale_ups, scale_downs). Each cell is the
median over the runs; the ratios to the pool fixed at max are taken within
each run, then the median. Standard library only.
"""

import json
import statistics
import sys


def main() -> int:
    runs = []
    with open(sys.argv[1]) as f:
        for line in f:
            line = line.strip()
            if line.startswith("["):
                runs.append({p["pool"]: p for p in json.loads(line)})
    if not runs:
        print("no results", file=sys.stderr)
        return 1
    pools = list(runs[0])
    base = "fixed at max"

    def median(pool, key):
        return statistics.median(r[pool][key] for r in runs)

    def ratio(pool, key):
        values = []
        for r in runs:
            b = r[base][key]
            values.append(r[pool][key] / b if b else float("inf"))
        return statistics.median(values)

    print(f"{len(runs)} runs, medians; ratios to the pool fixed at max within each run\n")
    print("| pool | p50 wait | p99 wait | max wait | timeouts | session-seconds | vs max | p99 - max's p99 | peak | ups/downs |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for pool in pools:
        p99_gap = statistics.median(r[pool]["p99_ms"] - r[base]["p99_ms"] for r in runs)
        print(f"| {pool} | {median(pool, 'p50_ms'):.1f} ms | {median(pool, 'p99_ms'):.1f} ms "
              f"| {median(pool, 'max_ms'):.1f} ms | {median(pool, 'timeouts'):.0f} "
              f"| {median(pool, 'session_seconds'):.0f} | {ratio(pool, 'session_seconds'):.2f} "
              f"| {p99_gap:+.1f} ms | {median(pool, 'peak'):.0f} "
              f"| {median(pool, 'scale_ups'):.0f}/{median(pool, 'scale_downs'):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
