-- wrk script for scripts/bench-http: POSTs a /v1/check-shaped body whose
-- target is a distinct client address on every request (alternately an IPv4
-- address and an IPv6 /64), so every request touches a fresh per-IP key
-- plus the global key. The same bodies go to /v1/echo for the baseline.
--
--   wrk -t2 -c64 -d15s --latency -s scripts/bench/check.lua \
--       http://127.0.0.1:8470/v1/check -- RUN [THREADS]
--
-- RUN (0..29) keeps runs apart: thread T of run RUN uses IPv4 addresses
-- (RUN*4+T+1).x.y.z and IPv6 /64s 2001:RRTT:x:y::/64 (RRTT = RUN*256+T),
-- so keys never repeat across runs or threads (up to 2^25 requests per
-- thread and run; the IPv6 /64 is what the default ipv6_prefix groups by).
-- The environment variable SLUICE_BENCH_RATE (requests/s over all threads;
-- unset or 0 = as fast as possible) paces requests with delay(): an
-- approximation of a constant-rate load (wrk2 is not in Debian). wrk decides
-- whether to call delay() at all when it loads the script, before init(),
-- hence an environment variable rather than an argument. Latency is measured from the moment a request is written,
-- so a backlog behind the schedule is not counted (coordinated omission);
-- with the server well below saturation that does not change the figures.
-- SLUICE_BENCH_REQUESTS, if set, stops each thread after that many requests
-- (the memory run: a known number of distinct keys, give or take the
-- requests in flight).
-- done() prints one machine-readable line, prefixed "RESULT ".

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } sluice_timespec;
  int clock_gettime(int clk, sluice_timespec *ts);
]]
local ts = ffi.new("sluice_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local next_tid = 0
function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
end

local rate = tonumber(os.getenv("SLUICE_BENCH_RATE") or "0") or 0
local limit = tonumber(os.getenv("SLUICE_BENCH_REQUESTS") or "0") or 0
local run, interval, next_at = 0, 0, nil
local k = 0
local head -- request line and headers up to "Content-Length: "

function init(args)
  run = tonumber(args[1] or "0") % 30
  local threads = tonumber(args[2] or "1")
  if rate > 0 then
    interval = 1000 * threads / rate -- ms between requests of this thread
  end
  -- Built by hand once (what wrk.format would build every time): the load
  -- generator shares the cores with the server, so its cost per request
  -- matters.
  local host = wrk.host
  if wrk.port then
    host = host .. ":" .. wrk.port
  end
  head = "POST " .. wrk.path .. " HTTP/1.1\r\nHost: " .. host
    .. "\r\nContent-Type: application/json\r\nContent-Length: "
end

local function paced_delay()
  local now = now_ms()
  if next_at == nil or next_at < now - 1000 then
    next_at = now -- start, or more than a second behind: do not burst
  end
  next_at = next_at + interval
  local d = next_at - now
  if d <= 0 then
    return 0
  end
  return math.floor(d)
end
if rate > 0 then
  delay = paced_delay
end

function request()
  local j = math.floor(k / 2)
  local ip
  if k % 2 == 0 then
    ip = string.format("%d.%d.%d.%d", run * 4 + tid + 1, math.floor(j / 65536) % 256,
      math.floor(j / 256) % 256, j % 256)
  else
    ip = string.format("2001:%x:%x:%x::1", run * 256 + tid, math.floor(j / 65536), j % 65536)
  end
  k = k + 1
  if k == limit then
    wrk.thread:stop()
  end
  local body = '{"action":"login","targets":{"ip":"' .. ip .. '"}}'
  return head .. #body .. "\r\n\r\n" .. body
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d mean_us=%.1f p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d "
      .. "errors=%d status_errors=%d\n",
    summary.requests, summary.duration, latency.mean, latency:percentile(50),
    latency:percentile(90), latency:percentile(99), latency:percentile(99.9), latency.max,
    e.connect + e.read + e.write + e.timeout, e.status))
end
