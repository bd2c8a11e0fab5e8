#!/usr/bin/env python3
"""Prints scripts/bench_http.sh's results as a markdown table.

  table.py RESULTS

RESULTS has one line per wrk run: `RUN CONNECTIONS TARGET` (echo or daemon)
followed by the key=value fields of the scripts' `result` line
(bench/http/common.lua). Each cell is the median over the runs; the ratio is
taken within each run, then the median; errors are summed over the runs.
Standard library only.
"""

import statistics
import sys


def read(path):
    rows = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) < 3:
                continue
            row = {"run": int(parts[0]), "connections": int(parts[1]), "target": parts[2]}
            for field in parts[3:]:
                key, _, value = field.partition("=")
                row[key] = value
            rows.append(row)
    return rows


def rate(x):
    return f"{x / 1000:.1f} k" if x >= 1000 else f"{x:.0f}"


def micros(us):
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} µs"


def main():
    rows = read(sys.argv[1])
    by = {}
    for r in rows:
        by.setdefault((r["connections"], r["target"]), []).append(r)
    runs = sorted({r["run"] for r in rows})
    print(f"Medians of {len(runs)} run(s); latency is per request (wrk); a cycle is an acquire and its release.")
    print()
    print("| connections | echo req/s | daemon req/s | daemon / echo | daemon cycles/s | "
          "echo p50 / p99 | daemon p50 / p99 | errors echo / daemon |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    failed = False
    for c in sorted({r["connections"] for r in rows}):
        echo = by.get((c, "echo"), [])
        daemon = by.get((c, "daemon"), [])
        if not echo or not daemon:
            continue

        def med(rs, key):
            return statistics.median(float(r[key]) for r in rs)

        def errors(rs):
            return sum(int(r["non2xx"]) + int(r["socket_errors"]) for r in rs)

        echo_runs = {r["run"]: r for r in echo}
        ratios = [float(d["rps"]) / float(echo_runs[d["run"]]["rps"])
                  for d in daemon if d["run"] in echo_runs and float(echo_runs[d["run"]]["rps"]) > 0]
        e_err, d_err = errors(echo), errors(daemon)
        failed = failed or e_err > 0 or d_err > 0
        print(f"| {c} | {rate(med(echo, 'rps'))} | {rate(med(daemon, 'rps'))} | "
              f"{statistics.median(ratios):.2f} | {rate(med(daemon, 'rps') / 2)} | "
              f"{micros(med(echo, 'p50_us'))} / {micros(med(echo, 'p99_us'))} | "
              f"{micros(med(daemon, 'p50_us'))} / {micros(med(daemon, 'p99_us'))} | "
              f"{e_err} / {d_err} |")
    statuses = {}
    for r in rows:
        if r.get("statuses", "-") != "-":
            for item in r["statuses"].split(","):
                status, _, n = item.partition(":")
                key = (r["target"], status)
                statuses[key] = statuses.get(key, 0) + int(n)
    if statuses:
        print()
        print("Answers outside 200-299: " +
              ", ".join(f"{t} {s}: {n}" for (t, s), n in sorted(statuses.items())))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
