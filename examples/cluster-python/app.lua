-- Round-robin cluster of a Python worker that takes connections from pml itself.
--
--   pml start examples/cluster-python/app.lua
--   curl localhost:8081        # "hello from <pid>", alternating between the two workers
--
-- pml binds 8081, accepts, and passes each connection's fd to the next ready worker over the
-- worker's IPC channel (the fd in PML_IPC_FD), in the same format Node uses; see worker.py.
return {
  name = "pyweb",
  script = "worker.py",            -- python3 worker.py
  listen = 8081,
  instances = 2,
  dispatch = "rr",
  ready = "message",               -- the worker says "ready" once it reads its channel
}
