-- wrk script: plain keep-alive GETs, for bench/http_echo_server (the HTTP
-- floor in scripts/bench_http.sh).
--
--   wrk -t2 -c64 -d10s --latency -s bench/http/get.lua http://127.0.0.1:PORT
--
-- It hooks request() and response() like lease.lua does, so the client
-- spends about the same work per request on both sides of the comparison
-- (wrk then hands every answer's headers and body to Lua), and it counts
-- answers outside 200-299 the same way.
package.path = debug.getinfo(1, "S").source:match("^@?(.*/)") .. "?.lua;" .. package.path
local common = require("common")

local get_request

function setup(thread)
  common.setup(thread)
end

function init(args)
  get_request = wrk.format("GET", "/")
  common.publish()
end

function request()
  return get_request
end

function response(status, headers, body)
  common.count(status)
end

function done(summary, latency, requests)
  common.done(summary, latency)
end
