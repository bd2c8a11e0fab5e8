#!/usr/bin/env python3
"""Runs pool_bench several times and prints Pool<T> vs baseline as markdown.

Each run is a separate process (so runs are independent: fresh heap, fresh
threads); the median of items_per_second over the runs is reported for every
(work, size, threads) point, with the ratio Pool<T> / baseline.

    python3 bench/report.py                           # build/release/bench/pool_bench, 5 runs
    python3 bench/report.py path/to/pool_bench -n 9 --min-time 0.5
    python3 bench/report.py --json-out runs.json      # also keep the raw runs
    python3 bench/report.py --json-in runs.json       # table from saved runs

Only the Python standard library is used.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys

NAME = re.compile(
    r"^BM_(?P<impl>Pool|Baseline)Cycle/size:(?P<size>\d+)/work:(?P<work>\d+)"
    r"(?:/[^/]+)*?/threads:(?P<threads>\d+)$"
)


def run_once(binary, min_time, bench_filter):
    cmd = [binary, "--benchmark_format=json"]
    if min_time is not None:
        cmd.append(f"--benchmark_min_time={min_time}")
    if bench_filter:
        cmd.append(f"--benchmark_filter={bench_filter}")
    done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout)


METRICS = ("items_per_second", "wall_cycles_per_s", "fairness")


def collect(runs):
    """{(work, size, threads): {(impl, metric): [value per run]}}, failures seen."""
    points = {}
    failures = 0
    for run in runs:
        for b in run.get("benchmarks", []):
            if b.get("run_type", "iteration") != "iteration":
                continue  # aggregates, if the user asked for repetitions
            m = NAME.match(b["name"])
            if not m or "items_per_second" not in b:
                continue
            key = (int(m["work"]), int(m["size"]), int(m["threads"]))
            for metric in METRICS:
                if metric in b:
                    points.setdefault(key, {}).setdefault((m["impl"], metric), []).append(
                        b[metric])
            failures += int(b.get("failures", 0))
    return points, failures


def median(values, impl, metric):
    got = values.get((impl, metric))
    return statistics.median(got) if got else None


def human(rate):
    if rate >= 1e6:
        return f"{rate / 1e6:.2f} M"
    if rate >= 1e3:
        return f"{rate / 1e3:.0f} k"
    return f"{rate:.0f}"


def spread(values, impl):
    got = values.get((impl, "items_per_second"))
    return f"{human(min(got))} - {human(max(got))}" if got else "-"


def table(points, work):
    lines = [
        "| threads | pool size | Pool<T> cycles/s | (min - max) | baseline cycles/s | (min - max) "
        "| Pool<T> / baseline | wall-clock ratio | fairness Pool<T> / baseline |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    keys = sorted((k for k in points if k[0] == work), key=lambda k: (k[2], k[1]))
    for key in keys:
        _, size, threads = key
        values = points[key]
        pool = median(values, "Pool", "items_per_second")
        base = median(values, "Baseline", "items_per_second")
        pool_wall = median(values, "Pool", "wall_cycles_per_s")
        base_wall = median(values, "Baseline", "wall_cycles_per_s")
        pool_fair = median(values, "Pool", "fairness")
        base_fair = median(values, "Baseline", "fairness")
        ratio = f"{pool / base:.2f}" if pool and base else "-"
        wall_ratio = f"{pool_wall / base_wall:.2f}" if pool_wall and base_wall else "-"
        fair = (f"{pool_fair:.2f} / {base_fair:.2f}"
                if pool_fair is not None and base_fair is not None else "-")
        lines.append(
            f"| {threads} | {size} | {human(pool) if pool else '-'} | "
            f"{spread(values, 'Pool')} | {human(base) if base else '-'} | "
            f"{spread(values, 'Baseline')} | {ratio} | {wall_ratio} | {fair} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("binary", nargs="?", default="build/release/bench/pool_bench")
    parser.add_argument("-n", "--runs", type=int, default=5, help="runs (default 5)")
    parser.add_argument("--min-time", type=float, default=None,
                        help="seconds per case (default: the binary's, 0.2)")
    parser.add_argument("--filter", default="", help="--benchmark_filter regex")
    parser.add_argument("--json-out", help="write the raw JSON of every run here")
    parser.add_argument("--json-in", help="render the table from runs saved by --json-out")
    args = parser.parse_args()

    if args.json_in:
        with open(args.json_in) as f:
            runs = json.load(f)
        args.runs = len(runs)
    else:
        if not os.access(args.binary, os.X_OK):
            sys.exit(f"report.py: {args.binary} is not an executable (build it first)")
        runs = []
        for i in range(args.runs):
            print(f"run {i + 1}/{args.runs} ...", file=sys.stderr, flush=True)
            runs.append(run_once(args.binary, args.min_time, args.filter))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(runs, f, indent=1)

    points, failures = collect(runs)
    if not points:
        sys.exit("report.py: no BM_PoolCycle / BM_BaselineCycle results found")
    ctx = runs[0].get("context", {})
    print(f"Acquire+release cycles per second (items_per_second), median of {args.runs} "
          f"runs on {ctx.get('num_cpus', '?')} CPUs at {ctx.get('mhz_per_cpu', '?')} MHz. "
          "Wall-clock ratio: the same ratio over the wall time until the slowest thread "
          "finished (wall_cycles_per_s). Fairness: when the first thread finished its "
          "share / when the last did (1 = together).")
    for work in sorted({k[0] for k in points}):
        print()
        if work == 0:
            print("Nothing done while holding the object:")
        else:
            print(f"{work} spin rounds of work while holding the object:")
        print()
        print(table(points, work))
    if failures:
        print(f"\nWarning: {failures} acquires failed during the runs (see the raw JSON).")


if __name__ == "__main__":
    main()
