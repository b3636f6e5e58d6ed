-- POST a rotation of precomputed JSON bodies and print the results as one JSON line.
--
-- Usage: wrk -t1 -c16 -d10s --latency -s bench/wrk/post.lua URL -- BODIES_FILE
-- BODIES_FILE holds one request body per line. Each thread builds every request once, in
-- init(), and starts the rotation at a different body; request() only hands them out, so
-- the script costs wrk next to nothing per request. No response() hook: it would make wrk
-- parse every response body. wrk counts responses with status >= 400 in errors.status.

local threads = {}
local next_id = 0

function setup(thread)
   thread:set("id", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

local requests = {}
local index = 0

function init(args)
   local file = args[1]
   if file == nil then
      error("post.lua needs the bodies file: wrk ... -s post.lua URL -- BODIES_FILE")
   end
   local headers = { ["Content-Type"] = "application/json" }
   for line in io.lines(file) do
      if #line > 0 then
         table.insert(requests, wrk.format("POST", nil, headers, line))
      end
   end
   if #requests == 0 then
      error("no bodies in " .. file)
   end
   index = ((id or 0) * 7) % #requests
end

function request()
   index = index + 1
   if index > #requests then
      index = 1
   end
   return requests[index]
end

function done(summary, latency, requests_stats)
   local e = summary.errors
   local out = string.format(
      '{"requests":%d,"duration_us":%d,"bytes":%d,'
         .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
         .. '"latency_us":{"min":%d,"mean":%.1f,"stdev":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d}}',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.min, latency.mean, latency.stdev,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.max)
   io.write("BENCH_JSON " .. out .. "\n")
end
