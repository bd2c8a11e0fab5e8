#!/usr/bin/env bash
# The main job: builds poolkeeper and runs it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/build.sh" release poolkeeper-demo >/dev/null
exec "$root/build/release/poolkeeper-demo" "$@"
