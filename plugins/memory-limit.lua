-- memory-limit.lua — restart a worker whose memory grows past a limit (PM2's max_memory_restart).
--
-- Every PML_MEMORY_CHECK_MS it looks at the resident memory (RSS, what `pml ls` shows) of each
-- online worker of every app. A worker above its limit is restarted as `pml restart <id>` would
-- do it (the app's kill_signal, SIGKILL after kill_timeout), and daemon.log says why:
--   [lua] .../memory-limit.lua:NN: memory-limit: restarting web worker 3 (pid 4242): 612.0M > limit 512.0M
--
-- Enable: copy or symlink this file into $PML_HOME/plugins (or a folder named in PML_PLUGINS),
--   then `pml plugins reload` (or start the daemon). Settings are environment variables of the
--   daemon: the environment of the pml command that started it.
--   An app file's own `max_memory_restart = "300M"` needs no plugin; apps that set it are left
--   to pml here.
--
-- Settings:
--   PML_MEMORY_LIMIT        bytes, or a number with K, M, G (powers of 1024): "300M", "1.5G"
--                           (default 512M)
--   PML_MEMORY_LIMIT_<APP>  one app's limit; <APP> is the app name upper-cased with every other
--                           character than A-Z, 0-9 as "_": PML_MEMORY_LIMIT_MY_API for "my-api".
--                           "off" (or 0) exempts the app.
--   PML_MEMORY_CHECK_MS     how often to look, in ms (default 5000)
--
-- Example:
--   ln -s "$PWD/plugins/memory-limit.lua" ~/.pml/plugins/
--   pml kill; PML_MEMORY_LIMIT=300M PML_MEMORY_LIMIT_BATCH=2G pml start ecosystem.lua

local settings = require "pml.settings"
local setting, parseBytes, human = settings.get, settings.bytes, settings.human
local warnOnce = settings.warnOnce("memory-limit")

local defaultLimit = 512 * 1024 ^ 2

-- The limit for one app in bytes, or nil when the app is exempt.
local function limitFor(app)
  local text = setting("PML_MEMORY_LIMIT", app)
  if text == nil then return defaultLimit end
  if text:lower() == "off" then return nil end
  local limit = parseBytes(text)
  if limit == nil then
    warnOnce(("%q is not a size (like 300M or 1G); using %s for %s"):format(text, human(defaultLimit), app))
    return defaultLimit
  end
  if limit == 0 then return nil end
  return limit
end

local checkMs = math.tointeger(tonumber(os.getenv("PML_MEMORY_CHECK_MS") or "")) or 5000
if checkMs < 1 then checkMs = 5000 end

-- worker id -> the pid we last restarted, so a restart in progress is not asked for twice.
local restarted = {}

local function check()
  for _, app in ipairs(pml.apps()) do
    -- An app with its own max_memory_restart key is watched by pml itself.
    local limit = app.max_memory_restart == nil and limitFor(app.name) or nil
    local workers = limit and pml.workers(app.name) or {}
    for _, w in ipairs(workers) do
      if w.status == "online" and w.pid and w.mem and w.mem > limit and restarted[w.id] ~= w.pid then
        restarted[w.id] = w.pid
        pml.warn(("memory-limit: restarting %s worker %d (pid %d): %s > limit %s")
          :format(app.name, w.id, w.pid, human(w.mem), human(limit)))
        local ok, err = pcall(pml.restart, tostring(w.id))
        if not ok then pml.warn("memory-limit: restart failed: " .. tostring(err)) end
      end
    end
  end
end

pml.every(checkMs, check)

return {
  name = "memory-limit",
  -- Forget a worker once it is gone (deleted or scaled down).
  onExit = function(worker) restarted[worker.id] = nil end,
}
