#!/usr/bin/env bash
# Autoscaling benchmark (numbers only, not a test).
#
#   scripts/bench_autoscale.sh [--runs 3] [--no-build] [autoscale_replay options...]
#
# Runs bench/autoscale_replay (a bursty open-loop load replayed against pools
# of real workers with a cold start: fixed at max, fixed at min, autoscaled)
# --runs times with seeds 1..N and prints the medians as a markdown table
# (bench/autoscale/table.py). Takes about (--seconds + a minute) x 3 per run.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
runs=3
build=1
args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
if [[ $build == 1 ]]; then "$root/scripts/build.sh" release autoscale_replay >/dev/null; fi
results="$(mktemp)"
trap 'rm -f "$results"' EXIT
for ((run = 1; run <= runs; run++)); do
  echo "run $run of $runs" >&2
  "$root/build/release/bench/autoscale_replay" --seed "$run" --json "${args[@]}" >>"$results"
done
python3 "$root/bench/autoscale/table.py" "$results"
