-- wrk script for the goodput benchmark (bench/goodput.py): POST $WRK_BODY, one connection per thread
-- (-t == -c), and per request record the client latency split by outcome (2xx vs not), every status
-- code, and Retry-After on refusals. Prints one OVLJSON line in done().
local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } ovl_timespec;
  int clock_gettime(int clk_id, ovl_timespec *tp);
]]
local ts = ffi.new("ovl_timespec")
local function now_us()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3
end

local f = assert(io.open(os.getenv("WRK_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("WRK_CTYPE") or "application/json"
if os.getenv("WRK_HLEN") then wrk.headers["Inference-Header-Content-Length"] = os.getenv("WRK_HLEN") end

local threads = {}
function setup(thread)
  threads[#threads + 1] = thread
end

ok_lat = {}
nok = 0
rej_lat = {}
nrej = 0
codes = {}
retry_after = 0
local req, t0
function init(args)
  req = wrk.format()
end
function request()
  t0 = now_us()
  return req
end
function response(status, headers, body)
  local dt = -1
  if t0 then dt = now_us() - t0 end
  t0 = nil
  local k = tostring(status)
  codes[k] = (codes[k] or 0) + 1
  if status >= 200 and status < 300 then
    nok = nok + 1
    ok_lat[nok] = dt
  else
    nrej = nrej + 1
    rej_lat[nrej] = dt
    for name, _ in pairs(headers) do
      if string.lower(name) == "retry-after" then
        retry_after = retry_after + 1
        break
      end
    end
  end
end

local function pct(sorted, p)
  local n = #sorted
  if n == 0 then return 0 end
  return sorted[math.max(1, math.ceil(n * p / 100))]
end

function done(summary, latency, requests)
  local ok, rej, allcodes, ra = {}, {}, {}, 0
  for _, t in ipairs(threads) do
    local l = t:get("ok_lat")
    for i = 1, #l do ok[#ok + 1] = l[i] end
    l = t:get("rej_lat")
    for i = 1, #l do rej[#rej + 1] = l[i] end
    local c = t:get("codes")
    for k, v in pairs(c) do allcodes[k] = (allcodes[k] or 0) + v end
    ra = ra + t:get("retry_after")
  end
  table.sort(ok)
  table.sort(rej)
  local fast = 0
  for i = 1, #rej do if rej[i] >= 0 and rej[i] < 100000 then fast = fast + 1 end end
  local cs = {}
  for k, v in pairs(allcodes) do cs[#cs + 1] = string.format('"%s":%d', k, v) end
  local e = summary.errors
  io.write(string.format(
    'OVLJSON {"requests":%d,"duration_us":%d,"ok":%d,"rej":%d,"codes":{%s},"ok_p50_us":%.1f,"ok_p99_us":%.1f,' ..
    '"ok_max_us":%.1f,"rej_p50_us":%.1f,"rej_p99_us":%.1f,"rej_max_us":%.1f,"rej_fast":%d,"retry_after":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"timeout":%d,"non2xx":%d}\n',
    summary.requests, summary.duration, #ok, #rej, table.concat(cs, ","), pct(ok, 50), pct(ok, 99), pct(ok, 100),
    pct(rej, 50), pct(rej, 99), pct(rej, 100), fast, ra, e.connect, e.read, e.write, e.timeout, e.status))
end
