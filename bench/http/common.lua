-- Shared by the wrk scripts in this directory (see scripts/bench_http.sh):
-- counts every answer by status in each thread, and prints one summary line
-- at the end that the script parses:
--
--   result requests=N duration_s=S rps=R p50_us=.. p99_us=.. mean_us=..
--          max_us=.. non2xx=N socket_errors=N statuses=503:2,409:1 [extra]
--
-- Latencies are wrk's, per request (from writing the request to reading the
-- whole answer). non2xx counts answers outside 200-299; socket_errors is
-- wrk's connect + read + write + timeout errors.
local common = {}

local threads = {}

-- Per thread (each wrk thread has its own Lua state): answers by status.
common.statuses = {}
common.answers = 0

function common.count(status)
  common.answers = common.answers + 1
  if status < 200 or status > 299 then
    common.statuses[status] = (common.statuses[status] or 0) + 1
  end
end

function common.setup(thread)
  table.insert(threads, thread)
end

-- `extra(threads)` may return more "key=value" text for the summary line.
function common.done(summary, latency, extra)
  local non2xx = 0
  local by_status = {}
  for _, t in ipairs(threads) do
    local s = t:get("statuses") or {}
    for status, n in pairs(s) do
      by_status[status] = (by_status[status] or 0) + n
      non2xx = non2xx + n
    end
  end
  local keys = {}
  for status in pairs(by_status) do table.insert(keys, status) end
  table.sort(keys)
  local parts = {}
  for _, status in ipairs(keys) do
    table.insert(parts, string.format("%d:%d", status, by_status[status]))
  end
  local e = summary.errors
  local socket_errors = e.connect + e.read + e.write + e.timeout
  local seconds = summary.duration / 1e6
  local line = string.format(
    "result requests=%d duration_s=%.3f rps=%.1f p50_us=%d p99_us=%d mean_us=%.1f max_us=%d non2xx=%d socket_errors=%d statuses=%s",
    summary.requests, seconds, summary.requests / seconds,
    latency:percentile(50), latency:percentile(99), latency.mean, latency.max,
    non2xx, socket_errors, #parts > 0 and table.concat(parts, ",") or "-")
  if extra then line = line .. " " .. extra(threads) end
  io.write(line, "\n")
end

-- Each thread's Lua state sees its own copy of this module's counters; wrk
-- reads them by global name (thread:get), so they are published as globals.
function common.publish()
  statuses = common.statuses
end

return common
