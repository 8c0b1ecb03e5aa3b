-- Cluster mode for an unchanged Node.js server: four workers behind one port.
--
--   pml start examples/cluster-node/app.lua
--   curl localhost:8080        # "hello from <pid>", a different worker each time (round-robin)
--   pml reload web             # zero-downtime: workers are replaced one by one
--   pml scale web 8
--
-- app.js is the plain `http.createServer(...).listen(8080)`. pml preloads a small shim into each
-- worker (shims/node/preload.js) that turns listen(8080) into a request to pml: pml binds the port
-- once, accepts, and passes each connection to the next ready worker over its IPC channel.
return {
  name = "web",
  script = "app.js",               -- node app.js
  instances = 4,
  -- dispatch = "rr" and the port come from the app itself (listen(8080) via the shim)
}
