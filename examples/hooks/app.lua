-- An app file with every lifecycle hook pml has today.
--
--   pml check examples/hooks/app.lua     # validate without starting anything
--   pml start examples/hooks/app.lua
--   pml logs flaky                       # the worker's output and pml's notes
--   cat ~/.pml/daemon.log                # what the hooks logged with pml.log / pml.warn
--
-- Hooks run inside the daemon, one at a time, each under an instruction budget: a hook that
-- errors or never returns is stopped, logged with file:line, and pml's default applies.
-- os.exit, os.execute and io.popen are not available (use pml.spawn for notifications).

return {
  name = "flaky",
  script = "worker.py",            -- python3, started in this folder
  instances = 2,                   -- PML_INSTANCE is 0 and 1
  env = { CRASH_AFTER = "8" },     -- the worker crashes after about this many seconds
  min_uptime = 1000,               -- an exit sooner than this counts as an unstable start
  max_restarts = 5,                -- more unstable starts in a row than this: "errored"
  kill_timeout = 3000,             -- SIGTERM, then SIGKILL after 3 s

  -- Once, when the app is started.
  onStart = function(app)
    pml.log("starting " .. app.name .. " with " .. app.instances .. " workers")
  end,

  -- Each time a worker process is spawned (first start and every restart).
  onSpawn = function(worker)
    pml.log(("worker %d (instance %d) spawned as pid %d, restarts so far: %d")
      :format(worker.id, worker.instance, worker.pid, worker.restarts))
  end,

  -- Every time a worker exits, whatever the reason. exit = { code, signal, uptime (ms) }.
  onExit = function(worker, exit)
    pml.log(("worker %d exited: code=%s signal=%s after %d ms")
      :format(worker.id, tostring(exit.code), tostring(exit.signal), exit.uptime))
  end,

  -- When a worker exits on its own (not by pml stop). Return:
  --   nil                   pml's default: restart with exponential backoff
  --   false                 leave it stopped
  --   a number / {delay=ms} restart after that many ms
  --   { errored = true }    give up on it: status "errored"
  onCrash = function(worker, exit)
    if exit.code == 78 then            -- EX_CONFIG: restarting will not help
      pml.warn("worker " .. worker.id .. " has a config error; not restarting")
      return false
    end
    if worker.unstable_restarts >= 3 then
      return { errored = true }        -- crashing at once, again and again: stop trying
    end
    -- Our own backoff: 500 ms, 1 s, 2 s, ... capped at 10 s.
    return { delay = math.min(500 * 2 ^ worker.backoff_step, 10000) }
  end,

  -- When the app is stopped (pml stop / pml delete / pml kill).
  onStop = function(app)
    pml.log(app.name .. " stopped")
  end,
}
