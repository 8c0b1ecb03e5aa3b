-- The smallest useful app file: one worker that pml keeps alive.
--
--   pml start examples/keepalive/app.lua
--   pml ls                       # one "keepalive" worker, online
--   kill -9 <its pid>            # ...and pml starts a new one
--   pml logs keepalive
--
-- Paths are relative to this file's folder, so this works from anywhere.
return {
  name = "keepalive",
  script = "worker.sh",           -- .sh runs with sh (.py with python3, .js with node)
  env = { GREETING = "hello from pml" },
  restart_delay = 200,            -- first backoff delay after a crash, doubling each crash in a row
  max_restarts = 10,              -- crashes in a row (each sooner than min_uptime) before "errored"
}
