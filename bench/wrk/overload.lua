-- POST a rotation of precomputed JSON bodies and record every response: status, latency, when
-- it came back, and whether it carried Retry-After. For the overload run (bench/overload.py),
-- which needs what wrk alone cannot give: accepted and refused requests told apart, each with
-- its own latency, and the 2xx rate over time.
--
-- Usage: wrk -t1 -c512 -d10s -s bench/wrk/overload.lua URL -- BODIES_FILE RECORDS_FILE
--
-- Each request carries X-Request-ID "<thread>-<n>", which the service echoes on every answer
-- (refusals too), so a response is matched to the time its request was written. LuaJIT's FFI
-- reads CLOCK_MONOTONIC, the clock Python's time.monotonic() reads, so the records line up
-- with the benchmark's own timestamps. done() writes one line per response to RECORDS_FILE:
--   <status> <latency us, or -1 when the answer had no id> <monotonic time, ms> <1 if Retry-After>

local ffi = require("ffi")
ffi.cdef([[
typedef struct { long tv_sec; long tv_nsec; } overload_timespec;
int clock_gettime(int clock_id, overload_timespec *tp);
]])
local CLOCK_MONOTONIC = 1
local timespec = ffi.new("overload_timespec")

local function now_us()
   ffi.C.clock_gettime(CLOCK_MONOTONIC, timespec)
   return tonumber(timespec.tv_sec) * 1000000 + math.floor(tonumber(timespec.tv_nsec) / 1000)
end

local threads = {}
local next_id = 0

function setup(thread)
   thread:set("id", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

local bodies = {}
local index = 0
local sent = 0
local started = {} -- request id -> monotonic us when it was written
records = {} -- one string per response; read by done() through thread:get

function init(args)
   local file = args[1]
   if file == nil or args[2] == nil then
      error("overload.lua needs: wrk ... -s overload.lua URL -- BODIES_FILE RECORDS_FILE")
   end
   for line in io.lines(file) do
      if #line > 0 then
         table.insert(bodies, line)
      end
   end
   if #bodies == 0 then
      error("no bodies in " .. file)
   end
   index = ((id or 0) * 7) % #bodies
   records_path = args[2] -- a global, so that done() can read it through thread:get
end

function request()
   index = index + 1
   if index > #bodies then
      index = 1
   end
   sent = sent + 1
   local rid = (id or 0) .. "-" .. sent
   started[rid] = now_us()
   local headers = { ["Content-Type"] = "application/json", ["X-Request-ID"] = rid }
   return wrk.format("POST", nil, headers, bodies[index])
end

function response(status, headers, body)
   local t = now_us()
   local rid = headers["x-request-id"] or headers["X-Request-ID"]
   local latency = -1
   if rid ~= nil and started[rid] ~= nil then
      latency = t - started[rid]
      started[rid] = nil
   end
   local retry = (headers["retry-after"] or headers["Retry-After"]) and 1 or 0
   records[#records + 1] = status .. " " .. latency .. " " .. math.floor(t / 1000) .. " " .. retry
end

function done(summary, latency, requests_stats)
   -- done() runs in wrk's main Lua state, which never saw init's arguments.
   local out = assert(io.open(threads[1]:get("records_path"), "w"))
   for _, thread in ipairs(threads) do
      local lines = thread:get("records")
      for i = 1, #lines do
         out:write(lines[i], "\n")
      end
   end
   out:close()
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests":%d,"duration_us":%d,'
         .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
      summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout))
end

