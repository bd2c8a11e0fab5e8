-- wrk script: lease + release cycles against the daemon.
--
--   wrk -t2 -c64 -d10s --latency -s bench/http/lease.lua http://127.0.0.1:PORT -- POOL [LEFTOVER_FILE]
--
-- Each request is either an acquire, POST /v1/pools/POOL/leases with
-- {"timeout_ms": 5000}, or the release of a lease an earlier acquire got,
-- DELETE /v1/leases/ID. The connections of one wrk thread share one Lua
-- state, so the ids go through one list per thread: a connection about to
-- send releases a held lease when there is one and acquires otherwise, so
-- never more leases are held than there are connections. A cycle is two
-- requests: requests/s / 2 is cycles/s. Leases still held at the end (the run stopped between an acquire
-- and its release) are written to LEFTOVER_FILE, one id a line, so the
-- caller can release them.
package.path = debug.getinfo(1, "S").source:match("^@?(.*/)") .. "?.lua;" .. package.path
local common = require("common")

local acquire_request
local held = {}          -- lease ids waiting for their release
acquired = 0             -- 201 answers to an acquire
released = 0             -- 200 answers to a release
leftover = held          -- read by done()
leftover_file = nil

function setup(thread)
  common.setup(thread)
end

function init(args)
  local pool = args[1] or "echo"
  leftover_file = args[2]
  acquire_request = wrk.format("POST", "/v1/pools/" .. pool .. "/leases",
                               {["Content-Type"] = "application/json"}, '{"timeout_ms": 5000}')
  common.publish()
end

function request()
  local n = #held
  if n > 0 then
    local id = held[n]
    held[n] = nil
    return wrk.format("DELETE", "/v1/leases/" .. id)
  end
  return acquire_request
end

function response(status, headers, body)
  common.count(status)
  if status == 201 then
    local id = body:match('"lease"%s*:%s*"([^"]+)"')
    if id then
      acquired = acquired + 1
      held[#held + 1] = id
    end
  elseif status == 200 then
    released = released + 1
  end
end

function done(summary, latency, requests)
  common.done(summary, latency, function(threads)
    local a, r, left, file = 0, 0, {}, nil
    for _, t in ipairs(threads) do
      a = a + (t:get("acquired") or 0)
      r = r + (t:get("released") or 0)
      for _, id in ipairs(t:get("leftover") or {}) do table.insert(left, id) end
      file = file or t:get("leftover_file")
    end
    if file then
      local f = assert(io.open(file, "w"))
      for _, id in ipairs(left) do f:write(id, "\n") end
      f:close()
    end
    return string.format("acquired=%d released=%d held_at_end=%d", a, r, #left)
  end)
end
