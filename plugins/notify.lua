-- notify.lua — run a command when a worker crashes or becomes errored (alerting: mail, Slack,
-- a pager... whatever the command does).
--
-- When a worker of any app exits on its own, it runs (with pml.spawn, so it never blocks pml)
--   $PML_NOTIFY_CMD crashed <app> <worker id> <exit code or signal> "<one-line summary>"
-- and when a worker becomes errored (crashed too often in a row; no longer restarted)
--   $PML_NOTIFY_CMD errored <app> <worker id> <exit code or signal> "<one-line summary>"
-- e.g.  /usr/local/bin/alert crashed web 3 1 "web worker 3 (pid 4242) exited with code 1 after 812 ms; 2 restarts"
-- The command gets the daemon's environment; its output goes to daemon.log.
-- At most PML_NOTIFY_MAX notifications per app are sent in any PML_NOTIFY_WINDOW_MS; the ones
-- beyond that are not sent, and daemon.log says which. Without PML_NOTIFY_CMD, notifications
-- are only written to daemon.log.
--
-- Enable: copy or symlink this file into $PML_HOME/plugins (or a folder named in PML_PLUGINS),
--   then `pml plugins reload` (or start the daemon). Settings are environment variables of the
--   daemon: the environment of the pml command that started it.
--
-- Settings:
--   PML_NOTIFY_CMD          the program to run (a path, or a name looked up in PATH; no shell)
--   PML_NOTIFY_MAX          notifications per app per window (default 5)
--   PML_NOTIFY_MAX_<APP>    the same for one app: PML_NOTIFY_MAX_MY_API for "my-api"
--                           (app name upper-cased, other characters than A-Z, 0-9 as "_")
--   PML_NOTIFY_WINDOW_MS    the window, in ms (default 60000)
--
-- Example (/usr/local/bin/pml-alert):
--   #!/bin/sh
--   curl -s -X POST -d "text=[$(hostname)] pml: $1 $2 #$3: $5" "$SLACK_WEBHOOK_URL"
-- then:
--   ln -s "$PWD/plugins/notify.lua" ~/.pml/plugins/
--   pml kill; PML_NOTIFY_CMD=/usr/local/bin/pml-alert PML_NOTIFY_MAX=3 pml start ecosystem.lua

local setting = require("pml.settings").get

local function integer(text, default)
  local n = math.tointeger(tonumber(text or ""))
  if n and n >= 0 then return n end
  return default
end

local command = setting("PML_NOTIFY_CMD")
local windowSeconds = integer(setting("PML_NOTIFY_WINDOW_MS"), 60000) / 1000

if not command then
  pml.log("notify: PML_NOTIFY_CMD is not set; crashes are only logged here")
end

-- app name -> os.time() of each notification sent in the current window
local sent = {}

local function notify(event, worker, exit, summary)
  local app = worker.app
  local now = os.time()
  local times = {}
  for _, at in ipairs(sent[app] or {}) do
    if now - at < windowSeconds then times[#times + 1] = at end
  end
  sent[app] = times
  local max = integer(setting("PML_NOTIFY_MAX", app), 5)
  if #times >= max then
    pml.warn(("notify: suppressed (%d sent for %s in the last %gs): %s: %s")
      :format(#times, app, windowSeconds, event, summary))
    return
  end
  times[#times + 1] = now
  local how = exit.signal or tostring(exit.code)
  if not command then
    pml.warn(("notify: %s: %s"):format(event, summary))
    return
  end
  local ok, err = pcall(pml.spawn, { command, event, app, tostring(worker.id), how, summary })
  if not ok then pml.warn("notify: cannot run PML_NOTIFY_CMD: " .. tostring(err)) end
end

local function summarize(worker, exit)
  local how = exit.signal and ("was killed by " .. exit.signal) or ("exited with code " .. tostring(exit.code))
  return ("%s worker %d (pid %s) %s after %d ms; %d restarts")
    :format(worker.app, worker.id, tostring(worker.pid), how, exit.uptime or 0, worker.restarts or 0)
end

return {
  name = "notify",

  onCrash = function(worker, exit)
    local summary = summarize(worker, exit)
    notify("crashed", worker, exit, summary)
    -- pml decides what to do about the crash after the hooks run: look again on the next turn.
    pml.after(1, function()
      for _, w in ipairs(pml.workers(worker.app) or {}) do
        if w.id == worker.id and w.status == "errored" then
          notify("errored", worker, exit, summary .. "; errored: no longer restarted")
        end
      end
    end)
  end,
}
