-- The apps scripts/dashboard-screenshot.sh runs: a 4-worker Node cluster behind one port, with an
-- onCrash hook whose decision shows on the timeline, and a small queue worker. The script copies
-- this file and writes the port in place of __PORT__.
return {
  {
    name = "api",
    script = "api.js",
    instances = 4,
    env = { PORT = "__PORT__" },
    onCrash = function(worker, exit)
      if exit.signal == "SIGKILL" then return { delay = 750 } end
    end,
  },
  {
    name = "queue",
    cmd = { "sh", "-c", "n=0; while :; do n=$((n+1)); echo \"job $n done in $((RANDOM % 90 + 10)) ms\"; sleep 0.7; done" },
  },
}
