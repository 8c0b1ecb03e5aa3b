-- pml's default restart policy: what happens when a worker exits without being asked to.
-- An app's onCrash hook overrides it whenever the hook returns something (not nil).
--
-- restart(app, worker, exit) returns one of
--   { restart = false, reason = "..." }   leave the worker stopped
--   { errored = true, reason = "..." }    it keeps crashing: mark it errored, stop restarting
--   { delay = ms }                        restart after an exponential backoff
local policy = {}

local function contains(list, value)
  for _, item in ipairs(list or {}) do
    if item == value then return true end
  end
  return false
end

-- app: autorestart, stop_exit_codes, max_restarts, restart_delay, restart_delay_max, min_uptime,
--   exp_backoff_restart_delay
-- worker: restarts, unstable_restarts, backoff_step
-- exit: code (nil if signalled), signal (name or nil), uptime (ms)
-- Missing fields take the defaults an app file gets.
function policy.restart(app, worker, exit)
  if app.autorestart == false then
    return { restart = false, reason = "autorestart is off" }
  end
  if exit.code ~= nil and contains(app.stop_exit_codes, exit.code) then
    return { restart = false, reason = ("exit code %d is in stop_exit_codes"):format(exit.code) }
  end
  local unstable = worker.unstable_restarts or 0
  if unstable > (app.max_restarts or 15) then
    return {
      errored = true,
      reason = ("crashed %d times in a row, each within min_uptime (%dms)"):format(unstable, app.min_uptime or 1000),
    }
  end
  -- PM2's exp_backoff_restart_delay: its own first delay, growing by half each time.
  local first, factor = app.restart_delay or 100, 2
  if app.exp_backoff_restart_delay then first, factor = app.exp_backoff_restart_delay, 1.5 end
  local delay = first * factor ^ (worker.backoff_step or 0)
  return { delay = math.floor(math.min(delay, app.restart_delay_max or 15000)) }
end

return policy
