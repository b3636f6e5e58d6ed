-- POST one V2 binary-tensor body over and over and print wrk's summary as one JSON line.
--
-- Usage: wrk -t2 -c64 -d8s --latency -s bench/wrk/v2_binary.lua URL -- BODY_FILE HEADER_LENGTH
-- BODY_FILE holds the JSON header followed by the raw tensor bytes; HEADER_LENGTH is the
-- header's length in bytes (the Inference-Header-Content-Length header). The request is built
-- once per thread in init(). wrk counts responses with status >= 400 in errors.status.

local req

function init(args)
   local file, header_length = args[1], args[2]
   if file == nil or header_length == nil then
      error("v2_binary.lua needs: wrk ... -s v2_binary.lua URL -- BODY_FILE HEADER_LENGTH")
   end
   local f = assert(io.open(file, "rb"))
   local body = f:read("*a")
   f:close()
   local headers = {
      ["Content-Type"] = "application/octet-stream",
      ["Inference-Header-Content-Length"] = header_length,
   }
   req = wrk.format("POST", nil, headers, body)
end

function request()
   return req
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
