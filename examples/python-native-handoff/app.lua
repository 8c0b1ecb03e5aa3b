-- Round-robin cluster of a Python worker on pml's native handoff channel: several connections
-- per message, credits returned in batches, no ACK per connection (docs/PROTOCOL.md).
--
--   pml start examples/python-native-handoff/app.lua
--   curl localhost:8082        # "hello from <pid>"
--   pml describe pyfast        # handoff: credits 32, 8 fds/message
--
-- pml binds 8082 and accepts; each worker says on PML_HANDOFF_FD how many connections it takes
-- in flight (its window) and per message, and gets them there instead of as NODE_HANDLE lines.
return {
  name = "pyfast",
  script = "worker.py",            -- python3 worker.py
  listen = 8082,
  instances = 2,
  dispatch = "rr",
  ready = "message",               -- the worker says "ready" once it reads its channels
}
