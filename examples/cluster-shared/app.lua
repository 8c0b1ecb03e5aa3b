-- "shared" dispatch: the workers inherit pml's listening socket and accept themselves, exactly
-- as under systemd socket activation (LISTEN_FDS / LISTEN_PID). gunicorn, uvicorn --fd, Go and
-- Node servers written for systemd run this way unmodified.
--
--   pml start examples/cluster-shared/app.lua
--   curl localhost:8082        # "hello from <pid>": whichever worker the kernel woke
return {
  name = "shared",
  script = "worker.py",            -- python3 worker.py
  listen = 8082,
  instances = 2,
  dispatch = "shared",
}
