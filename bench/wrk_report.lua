-- wrk script: send the body in $BENCH_BODY_FILE (POST, JSON) or GET when it is unset, and
-- print one line "BENCH_JSON {...}" with counts, errors and latency percentiles (microseconds).
local body_file = os.getenv("BENCH_BODY_FILE")
if body_file ~= nil and body_file ~= "" then
  local f = assert(io.open(body_file, "rb"))
  wrk.method = "POST"
  wrk.body = f:read("*a")
  f:close()
  wrk.headers["Content-Type"] = "application/json"
end

-- $BENCH_ROUTING_KEYS=N: each request carries X-Routing-Key customer-<i mod N> (canary
-- routing sees N customers, as in production, instead of one repeated key).
local routing_keys = tonumber(os.getenv("BENCH_ROUTING_KEYS") or "")
if routing_keys ~= nil and routing_keys > 0 then
  local sent = 0
  request = function()
    sent = sent + 1
    local headers = {}
    for name, value in pairs(wrk.headers) do
      headers[name] = value
    end
    headers["X-Routing-Key"] = "customer-" .. (sent % routing_keys)
    return wrk.format(nil, nil, headers, nil)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors_connect":%d,"errors_read":%d,"errors_write":%d,"errors_status":%d,' ..
    '"errors_timeout":%d,"mean_us":%.1f,"p50_us":%d,"p90_us":%d,"p95_us":%d,' ..
    '"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(95),
    latency:percentile(99), latency.max))
end
