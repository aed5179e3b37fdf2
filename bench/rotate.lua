-- wrk script: every request carries the next of the pre-created session
-- cookies, so the load rotates over all of them (1,000+ distinct sessions).
-- Usage: wrk ... -s bench/rotate.lua http://127.0.0.1:PORT -- /path cookies.txt [instance]
-- cookies.txt holds one "name=value" per line. done() prints one JSON line.

local cookies = {}
local path = "/"
local counter = 0

function init(args)
   path = args[1]
   for line in io.lines(args[2]) do
      if #line > 0 then
         cookies[#cookies + 1] = line
      end
   end
   -- Each wrk thread, and each wrk instance given a number as a third
   -- argument, starts at its own place in the list.
   counter = ((id or 0) * 7919 + (tonumber(args[3]) or 0) * 101) % #cookies
end

function setup(thread)
   thread:set("id", (id_counter or 0))
   id_counter = (id_counter or 0) + 1
end

function request()
   counter = counter % #cookies + 1
   return wrk.format("GET", path, { ["Cookie"] = cookies[counter] })
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      '{"requests": %d, "duration_us": %d, "connect_errors": %d, "read_errors": %d, '
         .. '"write_errors": %d, "status_errors": %d, "timeouts": %d, '
         .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "mean_us": %.1f, "max_us": %d}\n',
      summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.mean, latency.max))
end
