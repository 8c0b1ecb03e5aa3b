-- cpu-limit.lua — restart a worker stuck at high CPU: a guard against runaway loops.
--
-- Every PML_CPU_CHECK_MS it reads each online worker's CPU use (the percentage `pml ls` shows,
-- over pml's last one-second sample; 100 = one core). A worker that stays above PML_CPU_LIMIT
-- at every check for PML_CPU_LIMIT_FOR_MS is restarted as `pml restart <id>` does it (the app's
-- kill_signal, SIGKILL after kill_timeout), and daemon.log says why:
--   [lua] .../cpu-limit.lua:NN: cpu-limit: restarting web worker 3 (pid 4242): above 90% CPU for 30000 ms (now 99.8%)
-- One check below the limit starts the count again, so bursts do not trigger it.
--
-- Enable: copy or symlink this file into $PML_HOME/plugins (or a folder named in PML_PLUGINS),
--   then `pml plugins reload` (or start the daemon). Settings are environment variables of the
--   daemon: the environment of the pml command that started it.
--
-- Settings:
--   PML_CPU_LIMIT                the limit in % (default 90); "off" (or 0) disables it
--   PML_CPU_LIMIT_<APP>          the same for one app: PML_CPU_LIMIT_MY_API for "my-api"
--                                (app name upper-cased, other characters than A-Z, 0-9 as "_")
--   PML_CPU_LIMIT_FOR_MS         how long it must stay above, in ms (default 30000)
--   PML_CPU_LIMIT_FOR_MS_<APP>   the same for one app
--   PML_CPU_CHECK_MS             how often to look, in ms (default 1000; pml samples CPU once a second)
--
-- Example: a multi-threaded encoder may use 4 cores; everything else gets a minute above 95%:
--   ln -s "$PWD/plugins/cpu-limit.lua" ~/.pml/plugins/
--   pml kill; PML_CPU_LIMIT=95 PML_CPU_LIMIT_FOR_MS=60000 PML_CPU_LIMIT_ENCODER=off pml start ecosystem.lua

local setting = require("pml.settings").get

local warned = {}
local function number(key, app, default)
  local text = setting(key, app)
  if text == nil then return default end
  if text:lower() == "off" then return 0 end
  local n = tonumber(text)
  if n and n >= 0 then return n end
  if not warned[key .. text] then
    warned[key .. text] = true
    pml.warn(("cpu-limit: %s=%q is not a number; using %s"):format(key, text, tostring(default)))
  end
  return default
end

local checkMs = math.tointeger(tonumber(os.getenv("PML_CPU_CHECK_MS") or "")) or 1000
if checkMs < 1 then checkMs = 1000 end

-- worker id -> { pid = pid, checks = consecutive checks above the limit }
local hot = {}

local function check()
  local seen = {}
  for _, app in ipairs(pml.apps()) do
    local limit = number("PML_CPU_LIMIT", app.name, 90)
    local forMs = number("PML_CPU_LIMIT_FOR_MS", app.name, 30000)
    for _, w in ipairs(limit > 0 and pml.workers(app.name) or {}) do
      if w.status == "online" and w.pid and (w.cpu or 0) > limit then
        local h = hot[w.id]
        if not h or h.pid ~= w.pid then h = { pid = w.pid, checks = 0 } end
        h.checks = h.checks + 1
        hot[w.id] = h
        seen[w.id] = true
        if h.checks * checkMs >= forMs then
          hot[w.id] = nil
          pml.warn(("cpu-limit: restarting %s worker %d (pid %d): above %g%% CPU for %d ms (now %.1f%%)")
            :format(app.name, w.id, w.pid, limit, h.checks * checkMs, w.cpu))
          local ok, err = pcall(pml.restart, tostring(w.id))
          if not ok then pml.warn("cpu-limit: restart failed: " .. tostring(err)) end
        end
      end
    end
  end
  for id in pairs(hot) do
    if not seen[id] then hot[id] = nil end
  end
end

pml.every(checkMs, check)

return { name = "cpu-limit" }
