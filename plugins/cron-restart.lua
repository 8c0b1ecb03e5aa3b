-- cron-restart.lua — restart apps on a cron schedule (PM2's cron_restart).
--
-- PML_CRON_RESTART lists "app=expression" pairs separated by ";". The plugin looks at the clock
-- every second; at the first look in each minute, every app whose expression matches that minute
-- (local time) and that is online is restarted, as `pml restart <app>` does it, once. daemon.log
-- says so:  [lua] .../cron-restart.lua:NN: cron-restart: restarting web (*/5 * * * *)
-- A plugin that loads during a matching minute (daemon start, `pml plugins reload`) fires for it.
--
-- Expressions have the 5 classic fields: minute (0-59) hour (0-23) day-of-month (1-31)
-- month (1-12) day-of-week (0-7, 0 and 7 are Sunday). Each field is "*", a number, a range
-- "a-b", a step "*/n" or "a-b/n" (or "a/n": from a to the end), or a list of those "a,b-c,*/n".
-- As in cron, when both day fields are restricted a day matching either one matches.
-- Also: @hourly, @daily (@midnight), @weekly, @monthly, @yearly (@annually).
-- A malformed PML_CRON_RESTART makes the plugin fail to load: `pml plugins` shows why.
--
-- Enable: copy or symlink this file into $PML_HOME/plugins (or a folder named in PML_PLUGINS),
--   then `pml plugins reload` (or start the daemon). Settings are environment variables of the
--   daemon: the environment of the pml command that started it.
--   An app file's own `cron_restart = "0 3 * * *"` needs no plugin; apps that set it are left to
--   pml here.
--
-- Settings:
--   PML_CRON_RESTART   "web=*/5 * * * *;api=0 3 * * *"   (no default: nothing is restarted)
--
-- Example:
--   ln -s "$PWD/plugins/cron-restart.lua" ~/.pml/plugins/
--   pml kill; PML_CRON_RESTART='web=0 */6 * * *;worker=30 4 * * 1-5' pml start ecosystem.lua

local fields = {
  { name = "minute", min = 0, max = 59 },
  { name = "hour", min = 0, max = 23 },
  { name = "day-of-month", min = 1, max = 31 },
  { name = "month", min = 1, max = 12 },
  { name = "day-of-week", min = 0, max = 7 },
}

local macros = {
  ["@yearly"] = "0 0 1 1 *", ["@annually"] = "0 0 1 1 *", ["@monthly"] = "0 0 1 * *",
  ["@weekly"] = "0 0 * * 0", ["@daily"] = "0 0 * * *", ["@midnight"] = "0 0 * * *",
  ["@hourly"] = "0 * * * *",
}

-- One field ("1-10/2,30") -> a set { [1] = true, [3] = true, ... }; raises on anything else.
local function parseField(text, f)
  local set = {}
  for part in (text .. ","):gmatch("(.-),") do
    local range, step = part:match("^(.-)/(%d+)$")
    range = range or part
    step = math.tointeger(tonumber(step or "1"))
    local from, to
    if range == "*" then
      from, to = f.min, f.max
    elseif range:match("^%d+$") then
      from = tonumber(range)
      to = (part:find("/", 1, true) and f.max) or from
    else
      local a, b = range:match("^(%d+)%-(%d+)$")
      from, to = tonumber(a), tonumber(b)
    end
    if not from or not step or step < 1 then
      error(("%s field %q: expected *, n, a-b, */n or a-b/n"):format(f.name, text), 0)
    end
    if from < f.min or to > f.max or from > to then
      error(("%s field %q: out of range %d-%d"):format(f.name, text, f.min, f.max), 0)
    end
    for v = from, to, step do set[v] = true end
  end
  return set
end

-- "*/5 * * * *" -> a function(t) of an os.date("*t") table; raises with the reason.
local function parseCron(expr)
  expr = macros[expr] or expr
  local parts = {}
  for word in expr:gmatch("%S+") do parts[#parts + 1] = word end
  if #parts ~= 5 then
    error(("%q: expected 5 fields (minute hour day-of-month month day-of-week), got %d"):format(expr, #parts), 0)
  end
  local sets = {}
  for i, f in ipairs(fields) do sets[i] = parseField(parts[i], f) end
  local minute, hour, dom, month, dow = table.unpack(sets)
  if dow[7] then dow[0] = true end
  local anyDom, anyDow = parts[3]:sub(1, 1) == "*", parts[5]:sub(1, 1) == "*"
  return function(t)
    if not (minute[t.min] and hour[t.hour] and month[t.month]) then return false end
    local d, w = dom[t.day] == true, dow[t.wday - 1] == true
    if anyDom or anyDow then return d and w end
    return d or w
  end
end

-- PML_CRON_RESTART -> { { app = "web", expr = "*/5 * * * *", matches = fn }, ... }
local schedule = {}
for entry in (os.getenv("PML_CRON_RESTART") or ""):gmatch("[^;]+") do
  if entry:match("%S") then
    local app, expr = entry:match("^%s*(.-)%s*=%s*(.-)%s*$")
    if not app or app == "" or expr == "" then
      error(("PML_CRON_RESTART: %q is not app=expression"):format(entry), 0)
    end
    local ok, matches = pcall(parseCron, expr)
    if not ok then error(("PML_CRON_RESTART: %s: %s"):format(app, matches), 0) end
    schedule[#schedule + 1] = { app = app, expr = expr, matches = matches }
  end
end

-- Online, and without its own cron_restart key (pml runs that schedule itself).
local function due(name)
  for _, app in ipairs(pml.apps()) do
    if app.name == name then return app.status == "online" and app.cron_restart == nil end
  end
  return false
end

local lastMinute
local function tick()
  local now = os.time()
  local minute = now // 60
  if minute == lastMinute then return end
  lastMinute = minute
  local t = os.date("*t", now)
  for _, s in ipairs(schedule) do
    if s.matches(t) and due(s.app) then
      pml.warn(("cron-restart: restarting %s (%s)"):format(s.app, s.expr))
      local ok, err = pcall(pml.restart, s.app)
      if not ok then pml.warn("cron-restart: restart failed: " .. tostring(err)) end
    end
  end
end

if #schedule > 0 then
  pml.every(1000, tick)
else
  pml.log("cron-restart: PML_CRON_RESTART is not set; nothing to do")
end

return { name = "cron-restart" }
