#!/usr/bin/env bash
# Builds poolkeeper and runs the whole test suite.
#   scripts/test.sh [release|asan|tsan]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
flavor="${1:-release}"
"$root/scripts/build.sh" "$flavor"
cd "$root/build/$flavor"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
export TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}"
ctest --output-on-failure -j "$(nproc)" --timeout 900
