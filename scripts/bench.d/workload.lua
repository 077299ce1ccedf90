-- Generic wrk workload for scripts/bench, driven entirely by arguments after `--`:
--   method=GET|PUT|POST|...   path=/abs/path (may contain {i})   rotate=N (number of {i} values)
--   body=FILE                 header=Name:value (repeatable)
-- Every response's status is counted per thread; done() prints one line "BENCHJSON {...}" with the
-- totals, wrk's socket errors, latency percentiles (µs) and the status histogram, which
-- scripts/bench parses. A few bytes of the first non-2xx response are kept for diagnosis.

local threads = {}
local nthreads = 0

function setup(thread)
   thread:set("tid", nthreads)
   nthreads = nthreads + 1
   table.insert(threads, thread)
end

local method, path, rotate, body = "GET", "/", 0, nil
local headers = {}
local counter, step = 0, 1
local cached = nil
statuses = {}
first_error = ""

function init(args)
   for i = 1, #args do
      local k, v = string.match(args[i], "^([%w_]+)=(.*)$")
      if k == "method" then method = v
      elseif k == "path" then path = v
      elseif k == "rotate" then rotate = tonumber(v)
      elseif k == "step" then step = tonumber(v)
      elseif k == "body" then
         local f = assert(io.open(v, "rb"))
         body = f:read("*a")
         f:close()
      elseif k == "header" then
         local name, value = string.match(v, "^([^:]+):%s*(.*)$")
         headers[name] = value
      else
         error("workload.lua: unknown argument " .. args[i])
      end
   end
   counter = tid or 0
   if rotate == 0 then
      cached = wrk.format(method, path, headers, body)
   end
end

function request()
   if cached then return cached end
   local p = string.gsub(path, "{i}", tostring(counter % rotate))
   counter = counter + step
   return wrk.format(method, p, headers, body)
end

function response(status, hdrs, resp_body)
   statuses[status] = (statuses[status] or 0) + 1
   if (status < 200 or status > 299) and first_error == "" then
      first_error = tostring(status) .. " " .. string.sub(resp_body or "", 1, 300)
   end
end

local function json_string(s)
   s = string.gsub(s, '[%c"\\]', function(c) return string.format("\\u%04x", string.byte(c)) end)
   return '"' .. s .. '"'
end

function done(summary, latency, requests)
   local total = {}
   local err = ""
   for _, t in ipairs(threads) do
      for status, n in pairs(t:get("statuses") or {}) do
         total[status] = (total[status] or 0) + n
      end
      local e = t:get("first_error")
      if err == "" and e and e ~= "" then err = e end
   end
   local parts = {}
   for status, n in pairs(total) do
      table.insert(parts, string.format('"%d":%d', status, n))
   end
   local e = summary.errors
   io.write(string.format(
      'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d},' ..
      '"statuses":{%s},"first_error":%s}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.max,
      table.concat(parts, ","), json_string(err)))
end
