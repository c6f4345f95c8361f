-- wrk script for bench/run.sh.
-- BENCH_RATE=N (req/s over all threads, BENCH_THREADS threads): fixed-rate load. wrk has no
-- rate option, so each thread hands out request slots 1/rate apart (wall clock through
-- LuaJIT's FFI) and every connection that becomes free waits for the next slot. The delay
-- has millisecond resolution, so requests leave in small bursts on each millisecond; the
-- long-run rate is exact as long as enough connections are free (use -c >> rate * latency).
-- Without BENCH_RATE: closed loop, as fast as possible.
-- done() prints one JSON line: requests, duration, latency percentiles, errors.
local rate = tonumber(os.getenv("BENCH_RATE") or "0")
local threads = tonumber(os.getenv("BENCH_THREADS") or "2")

if rate > 0 then
  local ffi = require("ffi")
  ffi.cdef[[
    typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
    int clock_gettime(int clk, bench_timespec *tp);
  ]]
  local ts = ffi.new("bench_timespec")
  local function now_ms()
    ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
    return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
  end
  local interval = threads * 1000.0 / rate -- ms between this thread's slots
  local next_slot = nil
  function delay()
    local t = now_ms()
    if next_slot == nil then next_slot = t end
    next_slot = next_slot + interval
    -- when the server falls behind, do not catch up by more than 100 ms worth of slots
    if next_slot < t - 100 then next_slot = t - 100 end
    local d = next_slot - t
    if d < 0 then d = 0 end
    return math.floor(d)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,"errors":%d,"connect_errors":%d,"timeouts":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.connect + e.read + e.write + e.status + e.timeout, e.connect, e.timeout))
end
