#!/usr/bin/env bash
# Structural checks the compiler cannot make. Exits non-zero on a violation.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
status=0

# Time comes from the injected Clock: only the real clock reads the system clocks.
if grep -rnE 'steady_clock::now|system_clock::now|clock_gettime' src include \
    | grep -v '^src/pool/system_clock.cc:'; then
  echo "lint: read the time through poolkeeper::Clock, not the system clocks" >&2
  status=1
fi

# The core stays pure: no I/O libraries, no threads.
if grep -rnE '#include *[<"](boost|asio|sqlite3|beast|spdlog|thread|mutex|condition_variable|fstream|iostream)' src/core; then
  echo "lint: src/core must not include I/O or threading headers" >&2
  status=1
fi

# Tests wait on conditions, never on fixed sleeps.
if grep -rnE 'sleep_for|usleep\(|sleep_until' tests | grep -v '^tests/testing/'; then
  echo "lint: tests must wait on conditions (tests/testing/wait.h), not sleep" >&2
  status=1
fi
exit "$status"
