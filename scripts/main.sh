#!/usr/bin/env bash
# The main job: builds poolkeeper and runs the daemon on the quickstart
# configuration (a pool of Python workers on 127.0.0.1:8470) until Ctrl-C or
# SIGTERM. Extra arguments go to `poolkeeper serve`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/build.sh" release poolkeeper-cli >/dev/null
exec "$root/build/release/poolkeeper" serve --config "$root/examples/quickstart.toml" "$@"
