-- pml.autoscale: ready-made autoscale rules (also `require "pml.autoscale"`).
--
-- An app's `autoscale.rule` receives the app's metrics `m` every `autoscale.every` ms and returns
-- the instance count it wants (pml keeps it within min..max) or nil to leave the count alone:
--
--   m = {
--     instances = 4,         -- workers now
--     cpu = 55.2,            -- average CPU % per worker
--     mem = 83886080,        -- average resident memory per worker, bytes
--     rps = 812.5,           -- connections dispatched per second
--     inflight = 17,         -- connections in flight
--     workers = { { id = 3, cpu = 50.1, mem = 80000000, metrics = { queue = 12 } }, ... },
--     metrics = { queue = 9.5 },  -- each custom metric the workers report, averaged across them
--   }
--
-- The helpers below each return such a rule. `metric` names a field of m ("cpu", "mem", "rps",
-- "inflight") or else a custom metric, read from m.metrics. A rule returns nil while its metric
-- is missing or not a finite number, and never asks for fewer than 1 worker.
--
-- Target tracking: scale in proportion, so the metric settles near `value`.
--   autoscale = { min = 2, max = 16, every = 5000,
--                 rule = pml.autoscale.target{ metric = "cpu", value = 60 } }
--   4 workers at 90% → ceil(4 * 90 / 60) = 6 workers; at 20% → ceil(4 * 20 / 60) = 2.
--
--   rule = pml.autoscale.target{ metric = "queue", value = 10 }   -- about 10 queued jobs a worker
--
-- Steps: `by` workers more above `up`, `by` fewer below `down` (by defaults to 1).
--   rule = pml.autoscale.step{ metric = "rps", up = 500, down = 100, by = 2 }
--
-- Rules are plain functions, so they combine:
--   local byCpu = pml.autoscale.target{ metric = "cpu", value = 60 }
--   local byQueue = pml.autoscale.target{ metric = "queue", value = 10 }
--   rule = function(m) return math.max(byCpu(m) or 1, byQueue(m) or 1) end
local autoscale = {}

local function finite(x)
  return type(x) == "number" and x == x and x > -math.huge and x < math.huge
end

-- Raises at the line that called the helper (level 3: fail, the helper, its caller), so a typo
-- in an app file's options is reported where it was made.
local function fail(helper, message)
  error("pml.autoscale." .. helper .. ": " .. message, 3)
end

-- What is wrong with the options every helper takes, or nil.
local function optionsProblem(opts)
  if type(opts) ~= "table" then return "expected a table of options (got " .. type(opts) .. ")" end
  if opts.metric == "" then return 'metric must be a non-empty string (got "")' end
  if type(opts.metric) ~= "string" then
    return "metric must be a non-empty string (got " .. type(opts.metric) .. ")"
  end
  return nil
end

-- The metric's current value in m, or nil when it has none worth acting on.
local function current(m, metric)
  local value = m[metric]
  if value == nil and type(m.metrics) == "table" then value = m.metrics[metric] end
  if finite(value) then return value end
  return nil
end

-- A count of at least 1, always an integer (a float count as large as 2^63 has no integer form).
local function count(n)
  if n >= math.maxinteger then return math.maxinteger end
  return math.max(1, math.ceil(n))
end

-- target{ metric = "cpu", value = 60 }: ceil(instances * current / value).
function autoscale.target(opts)
  local problem = optionsProblem(opts)
  if problem then fail("target", problem) end
  local metric, target = opts.metric, opts.value
  if not finite(target) or target <= 0 then fail("target", "value must be a number > 0") end
  return function(m)
    local now = current(m, metric)
    if now == nil then return nil end
    -- The tolerance keeps float noise (4 * 0.3 / 0.3 = 4.0000000000000001) from adding a worker.
    return count(m.instances * now / target - 1e-9)
  end
end

-- step{ metric = "cpu", up = 70, down = 20, by = 1 }: instances ± by outside down..up.
function autoscale.step(opts)
  local problem = optionsProblem(opts)
  if problem then fail("step", problem) end
  local metric, up, down = opts.metric, opts.up, opts.down
  local by = opts.by == nil and 1 or type(opts.by) == "number" and math.tointeger(opts.by)
  if not finite(up) or not finite(down) then fail("step", "up and down must be numbers") end
  if down >= up then fail("step", "down must be below up") end
  if not by or by < 1 then fail("step", "by must be an integer >= 1") end
  return function(m)
    local now = current(m, metric)
    if now == nil then return nil end
    if now > up then return count(m.instances + by) end
    if now < down then return count(m.instances - by) end
    return nil
  end
end

return autoscale
