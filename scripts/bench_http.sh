#!/usr/bin/env bash
# shellcheck disable=SC2317  # functions run through poll() and the traps
# Load benchmark of the daemon's HTTP API (numbers only, not a test).
#
#   scripts/bench_http.sh [--runs 3] [--duration 10] [--connections "1 16 64 256"]
#                         [--sessions 300] [--no-build] [--keep DIR]
#
# Starts `poolkeeper serve` with a pool `echo` of C++ echo workers (min = max
# = --sessions, so an acquire never waits) and bench/http_echo_server (the
# HTTP floor: a bare Beast keep-alive server on the daemon's thread count),
# then for each run and each connection count runs wrk against the echo
# server (plain GETs, bench/http/get.lua) and then against the daemon
# (acquire + release cycles, bench/http/lease.lua), and prints medians as a
# markdown table (bench/http/table.py). wrk uses min(2, connections) threads
# and shares the machine with both servers.
#
#   scripts/bench_http.sh --waiters 10000 [--rounds 1] [--no-build] [--keep DIR]
#
# The waiting clients measurement instead (bench/http/waiters.py): a pool of
# one session, held, and N clients each waiting for it on its own keep-alive
# connection; the daemon's memory, threads and descriptors before and with
# them, one lease after the release, the queue drained when they go away.
#
#   scripts/bench_http.sh --ledger [--runs 3] [--duration 10] [--connections "16 64"]
#
# The store's cost instead: the same lease + release load (64 sessions)
# against four daemons, all started first and loaded in turn within each run
# (the order rotating from run to run, so the machine's noise spreads over
# all four): the store off; the store on with a pool without prices (the
# lease rows are written without the requests waiting); the store on with a
# priced pool (every acquire and release answers only once its charges are
# committed), and the same with sync_to_disk = false (commits survive the
# daemon, not the machine). Prints medians and each one's ratio to the
# store-off daemon, and the store's transactions and records per loaded second.
#
#   scripts/bench_http.sh --events [--runs 3] [--duration 10] [--connections "16 64"]
#
# What the live event stream costs the pools: the same lease + release load
# (64 sessions, the store off) against one daemon with no one on /v1/events,
# with a client reading every event (curl -N), and with a client that never
# reads (a small receive window: dropped once event_queue events behind).
# Prints medians and each one's ratio to the daemon with no subscriber.
#
# Everything started here is stopped on exit, Ctrl-C included. --keep DIR
# keeps the daemon's log, the config and wrk's raw output there.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

runs=3
duration=10
connections="1 16 64 256"
sessions=300
waiters=0
ledger=0
events=0
rounds=1
build=1
keep=""

usage() { sed -n '3,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
while (($#)); do
  case "$1" in
    --runs) runs="${2:?--runs needs a value}"; shift 2 ;;
    --duration) duration="${2:?--duration needs a value}"; shift 2 ;;
    --connections) connections="${2:?--connections needs a value}"; shift 2 ;;
    --sessions) sessions="${2:?--sessions needs a value}"; shift 2 ;;
    --waiters) waiters="${2:?--waiters needs a value}"; shift 2 ;;
    --rounds) rounds="${2:?--rounds needs a value}"; shift 2 ;;
    --ledger) ledger=1; shift ;;
    --events) events=1; shift ;;
    --no-build) build=0; shift ;;
    --keep) keep="${2:?--keep needs a value}"; shift 2 ;;
    -h|--help) usage ;;
    *) echo "bench_http.sh: unknown argument '$1'" >&2; usage ;;
  esac
done
for v in runs duration sessions rounds; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "bench_http.sh: --$v takes a positive number, got '${!v}'" >&2; exit 2; }
done
[[ "$waiters" =~ ^[0-9]+$ ]] || { echo "bench_http.sh: --waiters takes a number, got '$waiters'" >&2; exit 2; }
max_connections=0
for c in $connections; do
  [[ "$c" =~ ^[1-9][0-9]*$ ]] || { echo "bench_http.sh: --connections: '$c' is not a count" >&2; exit 2; }
  if ((c > max_connections)); then max_connections=$c; fi
done
if ((waiters == 0 && sessions < max_connections)); then
  echo "bench_http.sh: warning: $sessions sessions for $max_connections connections: acquires will wait" >&2
fi

bin="$root/build/release"
if ((build)); then
  targets=(poolkeeper-cli poolkeeper-echo-worker)
  ((waiters > 0)) || targets+=(http_echo_server)
  bash "$root/scripts/build.sh" release "${targets[@]}" >&2
fi
command -v curl >/dev/null || { echo "bench_http.sh: curl is missing (scripts/setup.sh installs it)" >&2; exit 1; }
if ((waiters == 0)); then
  command -v wrk >/dev/null || { echo "bench_http.sh: wrk is missing (scripts/setup.sh installs it)" >&2; exit 1; }
fi

# --- Processes started here, stopped on any exit ------------------------------

tmp="$(mktemp -d "${TMPDIR:-/tmp}/bench_http.XXXXXX")"
started=()  # the servers' pids, in start order
child=""    # the client running now (wrk, waiters.py)
daemon_pid=""
daemon_status=""

alive() { [[ -e /proc/$1 && "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]]; }  # running, not a zombie

# Sends SIGTERM and waits up to $2 seconds, then SIGKILL. Only our own children.
stop_pid() {
  local pid="$1" seconds="$2" i status=0 kept=() p
  if kill -TERM "$pid" 2>/dev/null; then
    for ((i = 0; i < seconds * 20; i++)); do
      alive "$pid" || break
      sleep 0.05
    done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || status=$?
  [[ "$pid" == "$daemon_pid" ]] && daemon_status=$status
  for p in "${started[@]}"; do [[ "$p" == "$pid" ]] || kept+=("$p"); done
  started=("${kept[@]}")
  return 0
}

# Runs a client in the background (so a signal interrupts the wait at once)
# and returns its exit status.
run_child() {
  "$@" &
  child=$!
  local status=0
  wait "$child" || status=$?
  child=""
  return "$status"
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  [[ -n "$child" ]] && stop_pid "$child" 5
  while ((${#started[@]})); do stop_pid "${started[-1]}" 15; done
  if [[ -n "$keep" ]]; then
    { mkdir -p "$keep" && cp -r "$tmp"/. "$keep"/ && echo "bench_http.sh: kept $keep" >&2; } || true
  fi
  rm -rf "$tmp"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The daemon needs a descriptor per connection and several per worker; the
# waiters' client one per waiter. Raise the soft limit (children inherit it).
need=$((waiters > 0 ? waiters + 256 : 4 * sessions + 4 * max_connections + 256))
hard="$(ulimit -Hn)"
if [[ "$hard" != unlimited ]] && ((hard < need)); then
  echo "bench_http.sh: needs $need open files, the hard limit is $hard (ulimit -Hn)" >&2
  exit 1
fi
if [[ "$(ulimit -Sn)" != unlimited ]] && (($(ulimit -Sn) < need)); then
  if [[ "$hard" == unlimited ]]; then ulimit -Sn "$need"; else ulimit -Sn "$hard"; fi
fi

# Polls (every 50 ms, for at most $1 seconds) until the command succeeds.
poll() {
  local seconds="$1" i
  shift
  for ((i = 0; i < seconds * 20; i++)); do
    "$@" && return 0
    sleep 0.05
  done
  return 1
}
http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$1" || true; }

# Starts the daemon on DIR/poolkeeper.toml (DIR: $1, else $tmp), its log in
# DIR/daemon.log; sets daemon_pid and daemon_port.
start_daemon() {
  local dir="${1:-$tmp}"
  # setsid: outside the terminal's process group, so Ctrl-C reaches only this
  # script, which then stops the daemon with one SIGTERM (a clean shutdown)
  # instead of the daemon seeing two signals.
  setsid "$bin/poolkeeper" serve --config "$dir/poolkeeper.toml" 2>"$dir/daemon.log" </dev/null &
  daemon_pid=$!
  started+=("$daemon_pid")
  listening() {
    alive "$daemon_pid" || { echo "bench_http.sh: the daemon exited:" >&2; cat "$dir/daemon.log" >&2; exit 1; }
    grep -qs '"msg":"listening"' "$dir/daemon.log"
  }
  poll 30 listening || { echo "bench_http.sh: the daemon did not listen within 30 s" >&2; exit 1; }
  daemon_port="$(grep -m1 '"msg":"listening"' "$dir/daemon.log" | sed -E 's/.*"address":"[^"]*:([0-9]+)".*/\1/')"
  # Ready: /health is 200 once every pool has its min sessions running.
  healthy() {
    alive "$daemon_pid" || { echo "bench_http.sh: the daemon exited:" >&2; cat "$dir/daemon.log" >&2; exit 1; }
    [[ "$(http_code "http://127.0.0.1:$daemon_port/health")" == 200 ]]
  }
  poll 120 healthy || { echo "bench_http.sh: the daemon was not healthy within 120 s" >&2; exit 1; }
}

pool_stats() { curl -s --max-time 5 "http://127.0.0.1:$daemon_port/v1/pools/echo"; }
stat_field() { grep -o "\"$1\":[0-9]*" | head -1 | cut -d: -f2; }

# Warnings and errors in the daemon's log, counted and shown. Reclaimed
# leases are expected after a load run (acquires answered after wrk stopped
# reading) and only counted.
log_problems() {
  local log="${1:-$tmp}/daemon.log" reclaimed others
  reclaimed="$(grep -c '"msg":"lease reclaimed after its lease timeout"' "$log" || true)"
  others="$(grep -E '"level":"(warn|error)"' "$log" | grep -vc '"msg":"lease reclaimed after its lease timeout"' || true)"
  echo "daemon log: $others warning/error lines ($reclaimed more for reclaimed leases)"
  grep -E '"level":"(warn|error)"' "$log" | grep -v '"msg":"lease reclaimed after its lease timeout"' | head -5 || true
}

# Stops the daemon cleanly and reports how it exited.
stop_daemon() {
  stop_pid "$daemon_pid" 30
  echo "daemon exit status after SIGTERM: $daemon_status"
}

# --- The waiting clients measurement ------------------------------------------

if ((waiters > 0)); then
  cat >"$tmp/poolkeeper.toml" <<EOF
[server]
listen = "127.0.0.1:0"
auth = "none"
shutdown_grace = "2s"
max_connections = $((waiters + 1000))

[store]
path = "$tmp/poolkeeper.db"

[log]
level = "info"

[pools.echo]
command = ["$bin/poolkeeper-echo-worker"]
min = 1
max = 1
max_queue = $((waiters + 100))
# The held lease has no release history to predict from: never refuse early.
early_reject = false
EOF
  start_daemon
  echo "daemon pid $daemon_pid on 127.0.0.1:$daemon_port; open files limit $(ulimit -Sn)"
  status=0
  run_child python3 "$root/bench/http/waiters.py" --port "$daemon_port" --pid "$daemon_pid" \
    --waiters "$waiters" --rounds "$rounds" || status=$?
  log_problems
  stop_daemon
  exit "$status"
fi

# Leases the last run left held are released; the rest (answers wrk never
# read) are reclaimed by lease_timeout, and their sessions replaced. Waits
# until nothing is leased and the pool is back to its min (/health 200).
release_leftovers() {
  if [[ -s "$tmp/leftover.txt" ]]; then
    local urls=()
    while read -r id; do urls+=("http://127.0.0.1:$daemon_port/v1/leases/$id"); done <"$tmp/leftover.txt"
    curl -s --max-time 30 -X DELETE "${urls[@]}" >/dev/null || true
    : >"$tmp/leftover.txt"
  fi
  settled() {
    [[ "$(pool_stats | stat_field leased)" == 0 &&
      "$(http_code "http://127.0.0.1:$daemon_port/health")" == 200 ]]
  }
  poll 60 settled || echo "bench_http.sh: warning: leases still held or sessions missing 60 s after a run" >&2
}

# One wrk run of acquire + release cycles against the daemon: its result line
# goes to $results as "RUN CONNECTIONS MODE fields...", a summary (labelled
# $4) to stderr; then what it left leased is released.
lease_load() {
  local mode="$1" run="$2" c="$3" label="$4" out line
  out="$tmp/wrk-$mode-$run-$c.txt"
  run_child wrk -t $((c < 2 ? c : 2)) -c "$c" -d "${duration}s" --timeout 10s --latency \
    -s "$root/bench/http/lease.lua" "http://127.0.0.1:$daemon_port" -- echo "$tmp/leftover.txt" \
    >"$out" 2>&1 || { echo "bench_http.sh: wrk failed:" >&2; cat "$out" >&2; exit 1; }
  line="$(grep -m1 '^result ' "$out" || true)"
  [[ -n "$line" ]] || { echo "bench_http.sh: no result from wrk:" >&2; cat "$out" >&2; exit 1; }
  echo "$run $c $mode ${line#result }" >>"$results"
  printf '  run %d, %4d connections, %s %s\n' "$run" "$c" "$label" \
    "$(tr ' ' '\n' <<<"$line" | grep -E '^(rps|p50_us|p99_us|non2xx|socket_errors)=' | tr '\n' ' ')" >&2
  release_leftovers
}

# --- The store's cost ------------------------------------------------------------

if ((ledger)); then
  [[ "$connections" == "1 16 64 256" ]] && connections="16 64"
  results="$tmp/results.txt"
  : >"$results"
  echo "runs $runs, ${duration} s each, connections: $connections; $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  modes=(off on priced priced-normal)
  declare -A pid_of port_of
  for mode in "${modes[@]}"; do
    dir="$tmp/$mode"
    mkdir -p "$dir"
    store_enabled=true
    prices=""
    sync_to_disk=true
    [[ "$mode" == off ]] && store_enabled=false
    [[ "$mode" == priced* ]] && prices=$'cost_per_session = 0.01\ncost_per_use = 0.001\ncost_per_hour_alive = 0.05'
    [[ "$mode" == priced-normal ]] && sync_to_disk=false
    cat >"$dir/poolkeeper.toml" <<EOF
[server]
listen = "127.0.0.1:0"
auth = "none"
shutdown_grace = "2s"

[store]
enabled = $store_enabled
sync_to_disk = $sync_to_disk
path = "$dir/poolkeeper.db"

[pools.echo]
command = ["$bin/poolkeeper-echo-worker"]
min = 64
max = 64
max_queue = 100000
lease_timeout = "10s"
$prices
EOF
    start_daemon "$dir"
    pid_of[$mode]=$daemon_pid
    port_of[$mode]=$daemon_port
  done
  loads=0
  for ((run = 1; run <= runs; run++)); do
    for c in $connections; do
      for ((i = 0; i < ${#modes[@]}; i++)); do
        mode="${modes[(i + run - 1) % ${#modes[@]}]}"
        daemon_pid=${pid_of[$mode]}
        daemon_port=${port_of[$mode]}
        lease_load "$mode" "$run" "$c" "$(printf 'store %-13s' "$mode")"
      done
      loads=$((loads + 1))
    done
  done
  loaded=$((loads * duration))  # seconds each daemon was under load
  for mode in "${modes[@]}"; do
    daemon_pid=${pid_of[$mode]}
    echo "store $mode:"
    log_problems "$tmp/$mode"
    stop_daemon
    closed="$(grep -m1 '"msg":"store closed"' "$tmp/$mode/daemon.log" || true)"
    if [[ -n "$closed" ]]; then
      tx="$(grep -o '"transactions":"[0-9]*"' <<<"$closed" | grep -o '[0-9][0-9]*')"
      rec="$(grep -o '"records":"[0-9]*"' <<<"$closed" | grep -o '[0-9][0-9]*')"
      big="$(grep -o '"largest_transaction":"[0-9]*"' <<<"$closed" | grep -o '[0-9][0-9]*')"
      echo "store $mode: $tx commits, $rec records in $loaded s under load: $((rec / loaded)) records/s, $((tx / loaded)) commits/s, $((rec / (tx > 0 ? tx : 1))) records a commit on average, $big at most" >>"$tmp/store.txt"
    fi
  done
  echo
  python3 "$root/bench/http/ledger_table.py" "$results"
  echo
  cat "$tmp/store.txt"
  exit 0
fi

# --- The event stream's cost ------------------------------------------------------

if ((events)); then
  [[ "$connections" == "1 16 64 256" ]] && connections="16 64"
  results="$tmp/results.txt"
  : >"$results"
  echo "runs $runs, ${duration} s each, connections: $connections; $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  cat >"$tmp/poolkeeper.toml" <<EOF
[server]
listen = "127.0.0.1:0"
auth = "none"
shutdown_grace = "2s"

[store]
enabled = false

[pools.echo]
command = ["$bin/poolkeeper-echo-worker"]
min = 64
max = 64
max_queue = 100000
lease_timeout = "10s"
EOF
  start_daemon
  events_url="http://127.0.0.1:$daemon_port/v1/events"
  subscribers() { curl -s --max-time 5 "http://127.0.0.1:$daemon_port/metrics" | awk '$1 == "poolkeeper_event_subscribers" {print $2}'; }
  has_one() { [[ "$(subscribers)" == 1 ]]; }
  for ((run = 1; run <= runs; run++)); do
    for mode in none reading stalled; do
      subscriber=""
      case "$mode" in
        reading)
          curl -sN "$events_url" >/dev/null &
          subscriber=$! ;;
        stalled)
          python3 -c '
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.connect(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"GET /v1/events HTTP/1.1\r\nHost: bench\r\n\r\n")
while True:
    time.sleep(3600)
' "$daemon_port" &
          subscriber=$! ;;
      esac
      if [[ -n "$subscriber" ]]; then
        started+=("$subscriber")
        poll 30 has_one || { echo "bench_http.sh: the $mode subscriber did not connect" >&2; exit 1; }
      fi
      for c in $connections; do
        lease_load "$mode" "$run" "$c" "$(printf 'events %-8s' "$mode")"
        echo "    $(subscribers) subscriber(s) after the run" >&2
      done
      if [[ -n "$subscriber" ]]; then stop_pid "$subscriber" 5; fi
    done
  done
  dropped="$(curl -s --max-time 5 "http://127.0.0.1:$daemon_port/metrics" |
    awk '$1 == "poolkeeper_event_subscribers_dropped_total" {print $2}')"
  log_problems
  stop_daemon
  echo
  python3 "$root/bench/http/ledger_table.py" --events "$results"
  echo
  echo "subscribers dropped as slow consumers: $dropped (the stalled one of each of the $runs runs)"
  exit 0
fi

# --- The load benchmark ---------------------------------------------------------

cat >"$tmp/poolkeeper.toml" <<EOF
[server]
listen = "127.0.0.1:0"
auth = "none"
shutdown_grace = "2s"

[store]
path = "$tmp/poolkeeper.db"

[log]
level = "info"

[pools.echo]
command = ["$bin/poolkeeper-echo-worker"]
min = $sessions
max = $sessions
max_starting = 64
max_queue = 100000
# A lease whose acquire was in flight when wrk stopped is never released by
# it: reclaimed after this.
lease_timeout = "10s"
EOF
start_daemon

setsid "$bin/bench/http_echo_server" --port 0 >"$tmp/echo.out" 2>&1 </dev/null &
echo_pid=$!
started+=("$echo_pid")
echo_listening() {
  alive "$echo_pid" || { echo "bench_http.sh: http_echo_server exited:" >&2; cat "$tmp/echo.out" >&2; exit 1; }
  grep -qs '^port ' "$tmp/echo.out"
}
poll 10 echo_listening || { echo "bench_http.sh: http_echo_server did not start" >&2; exit 1; }
echo_port="$(awk '/^port /{print $2; exit}' "$tmp/echo.out")"
echo_ready() { [[ "$(http_code "http://127.0.0.1:$echo_port/")" == 200 ]]; }
poll 10 echo_ready || { echo "bench_http.sh: http_echo_server does not answer" >&2; exit 1; }

echo "daemon pid $daemon_pid on 127.0.0.1:$daemon_port ($sessions sessions), echo server on 127.0.0.1:$echo_port" >&2
echo "runs $runs, ${duration} s each, connections: $connections; $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2

results="$tmp/results.txt"
: >"$results"
# Runs wrk against $1 (echo or daemon) with $2 connections; appends the result line.
run_wrk() {
  local target="$1" c="$2" run="$3" threads=$(($2 < 2 ? $2 : 2))
  local out="$tmp/wrk-$run-$c-$target.txt" url script args=()
  if [[ "$target" == echo ]]; then
    url="http://127.0.0.1:$echo_port/"
    script="$root/bench/http/get.lua"
  else
    url="http://127.0.0.1:$daemon_port"
    script="$root/bench/http/lease.lua"
    args=(-- echo "$tmp/leftover.txt")
  fi
  if ! run_child wrk -t "$threads" -c "$c" -d "${duration}s" --timeout 10s --latency -s "$script" \
    "$url" "${args[@]}" >"$out" 2>&1; then
    echo "bench_http.sh: wrk failed:" >&2
    cat "$out" >&2
    exit 1
  fi
  local pid="$daemon_pid" name=daemon
  [[ "$target" == echo ]] && pid="$echo_pid" name=http_echo_server
  if ! alive "$pid"; then
    echo "bench_http.sh: $name died during the run ($c connections); wrk said:" >&2
    cat "$out" >&2
    [[ "$target" == echo ]] || tail -20 "$tmp/daemon.log" >&2
    exit 1
  fi
  local line
  line="$(grep -m1 '^result ' "$out" || true)"
  [[ -n "$line" ]] || { echo "bench_http.sh: no result from wrk:" >&2; cat "$out" >&2; exit 1; }
  echo "$run $c $target ${line#result }" >>"$results"
  printf '  run %d, %4d connections, %-6s %s\n' "$run" "$c" "$target" \
    "$(tr ' ' '\n' <<<"$line" | grep -E '^(rps|p50_us|p99_us|non2xx|socket_errors)=' | tr '\n' ' ')" >&2
}

for ((run = 1; run <= runs; run++)); do
  for c in $connections; do
    run_wrk echo "$c" "$run"
    release_leftovers
    run_wrk daemon "$c" "$run"
  done
done
release_leftovers

echo
status=0
python3 "$root/bench/http/table.py" "$results" || status=$?
stats="$(pool_stats || true)"
echo
echo "pool echo: acquisitions $(stat_field acquisitions <<<"$stats"), releases $(stat_field releases <<<"$stats"), reclaimed $(stat_field reclaimed <<<"$stats") (acquires in flight when wrk stopped), timeouts $(stat_field timeouts <<<"$stats"), rejections $(stat_field rejections <<<"$stats"), sessions $(stat_field sessions <<<"$stats")"
log_problems
stop_daemon
exit "$status"
