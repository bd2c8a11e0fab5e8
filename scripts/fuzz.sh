#!/usr/bin/env bash
# Builds the request decoding fuzz target (fuzz/request_fuzz.cc) with clang's
# libFuzzer, ASan and UBSan into build/fuzz, then fuzzes for a while on a copy
# of the seed corpus (fuzz/corpus). Exits non-zero on a crash, a leak or a
# broken invariant, keeping the input in build/fuzz/artifacts/.
#   scripts/fuzz.sh [seconds]                      (default 60)
#   build/fuzz/request_fuzz build/fuzz/artifacts/crash-...   replays one input
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds="${1:-60}"
cd "$root"
scripts/setup.sh
out="$root/build/fuzz"
mkdir -p "$out/obj" "$out/corpus" "$out/artifacts"

cxx=clang++-16
# g++ has no libFuzzer. libstdc++ 12's <expected> is only declared when
# __cpp_concepts >= 202002L; clang 16 implements that but still advertises
# 201907L, so the macro is redefined (std::expected then works as with g++).
flags=(-std=c++2b -g -O1 -fno-omit-frame-pointer
       -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
       -Wall -Wextra -Werror
       -Wno-builtin-macro-redefined -U__cpp_concepts -D__cpp_concepts=202002L
       -DBOOST_ASIO_NO_DEPRECATED -I"$root/include" -I"$root/src")
sources=(fuzz/request_fuzz.cc src/server/request.cc)

# Compile only what changed: an object is rebuilt when it is missing, when the
# flags changed, or when its source or a project header it includes (from
# clang's dependency file) is newer.
stamp="$out/flags"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$cxx ${flags[*]}" ]]; then
  rm -f "$out"/obj/*.o
  printf '%s\n' "$cxx ${flags[*]}" >"$stamp"
fi
objects=()
for src in "${sources[@]}"; do
  obj="$out/obj/$(basename "${src%.cc}").o"
  objects+=("$obj")
  stale=0
  if [[ ! -f "$obj" || ! -f "$obj.d" ]]; then
    stale=1
  else
    # The dependency file: "obj: src header header ...", lines continued with '\'.
    for dep in $(sed -e 's/^[^:]*://' -e 's/\\$//' "$obj.d"); do
      if [[ ! -e "$dep" || "$dep" -nt "$obj" ]]; then stale=1; break; fi
    done
  fi
  if ((stale)); then
    echo "fuzz: compiling $src" >&2
    "$cxx" "${flags[@]}" -MMD -MF "$obj.d" -c "$src" -o "$obj"
  fi
done
bin="$out/request_fuzz"
for obj in "${objects[@]}"; do
  if [[ ! -f "$bin" || "$obj" -nt "$bin" ]]; then
    "$cxx" "${flags[@]}" "${objects[@]}" -o "$bin"
    break
  fi
done

# New inputs go to the copy; fuzz/corpus holds only the seeds.
cp fuzz/corpus/* "$out/corpus/"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
# libFuzzer reports every new input: the log keeps that out of CI's output.
log="$out/fuzz.log"
echo "fuzz: request_fuzz for ${seconds}s (log: $log)" >&2
if ! "$bin" -max_total_time="$seconds" -max_len=65536 -timeout=10 -dict=fuzz/request.dict \
    -artifact_prefix="$out/artifacts/" -print_final_stats=1 "$out/corpus" >"$log" 2>&1; then
  tail -n 80 "$log" >&2
  echo "fuzz: request_fuzz failed; the input is kept in $out/artifacts/" >&2
  echo "fuzz: replay it with $bin <file>" >&2
  exit 1
fi
grep -E '^#[0-9]+[[:space:]]+DONE|^stat::' "$log" >&2
