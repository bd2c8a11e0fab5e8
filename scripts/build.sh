#!/usr/bin/env bash
# Configures (once) and builds poolkeeper into build/<flavor>.
#   scripts/build.sh [release|asan|tsan] [ninja targets...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
flavor="${1:-release}"
shift || true
"$root/scripts/setup.sh"
case "$flavor" in
  release) args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo) ;;
  asan) args=(-DCMAKE_BUILD_TYPE=Debug -DPOOLKEEPER_SANITIZE=address,undefined) ;;
  tsan) args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DPOOLKEEPER_SANITIZE=thread) ;;
  *) echo "build.sh: unknown flavor '$flavor' (release, asan, tsan)" >&2; exit 2 ;;
esac
dir="$root/build/$flavor"
if [[ ! -f "$dir/build.ninja" ]]; then
  cmake -S "$root" -B "$dir" -G Ninja -DPOOLKEEPER_WERROR=ON "${args[@]}" >/dev/null
fi
cmake --build "$dir" -- "$@"
