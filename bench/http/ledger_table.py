#!/usr/bin/env python3
"""Prints scripts/bench_http.sh --ledger's (or --events') results as a markdown table.

  ledger_table.py [--events] RESULTS

RESULTS has one line per wrk run: `RUN CONNECTIONS MODE` (off, on, priced, priced-normal)
followed by the key=value fields of the scripts' `result` line
(bench/http/common.lua). Each cell is the median over the runs; a ratio to
the store-off daemon is taken between the medians (the modes ran one after
the other, not interleaved). Standard library only.
"""

import statistics
import sys

from table import micros, rate, read  # the same results format

MODES = [("off", "store off"), ("on", "store on, no prices"), ("priced", "store on, priced pool"),
         ("priced-normal", "priced, sync_to_disk = false")]


EVENT_MODES = [("none", "no subscriber"), ("reading", "a subscriber reading every event"),
               ("stalled", "a subscriber that never reads")]


def main():
    events = sys.argv[1] == "--events"
    modes = EVENT_MODES if events else MODES
    base_mode = modes[0][0]
    rows = read(sys.argv[-1])
    runs = sorted({r["run"] for r in rows})
    print(f"Medians of {len(runs)} run(s); a cycle is an acquire and its release.")
    print()
    print(f"| connections | daemon | req/s | / {modes[0][1]} | cycles/s | p50 / p99 | errors |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    failed = False
    for c in sorted({r["connections"] for r in rows}):
        base = None
        for mode, label in modes:
            rs = [r for r in rows if r["connections"] == c and r["target"] == mode]
            if not rs:
                continue
            rps = statistics.median(float(r["rps"]) for r in rs)
            p50 = statistics.median(float(r["p50_us"]) for r in rs)
            p99 = statistics.median(float(r["p99_us"]) for r in rs)
            errors = sum(int(r["non2xx"]) + int(r["socket_errors"]) for r in rs)
            failed |= errors > 0
            if mode == base_mode:
                base = rps
            ratio = f"{rps / base:.2f}" if base else "-"
            print(f"| {c} | {label} | {rate(rps)} | {ratio} | {rate(rps / 2)} | "
                  f"{micros(p50)} / {micros(p99)} | {errors} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
