/// The sandbox, in Lua: run once per state with the full globals (see `pml_setup`).
///
/// It removes what scripts must not reach, and returns `newEnv(dir)`: the environment table one
/// app file (or the library environment, with no `dir`) runs in. Globals a script sets land in its
/// own environment; library tables are copied per environment, so no script can clobber another's.
let sandboxPrelude = #"""
local base = _G
local ipairs, next, type, error, tostring, rawget, rawset = ipairs, next, type, error, tostring, rawget, rawset
local rawload, rawloadfile, searchpath = load, loadfile, package.searchpath
local rawsetmetatable, rawcollect = setmetatable, collectgarbage
local libraryPath = package.path

-- Process-wide or sandbox-escaping functions; pml.spawn replaces the process ones.
os.exit, os.execute, os.setlocale, io.popen = nil, nil, nil, nil
-- Each environment gets its own require (Lua files only, from the library and app folders).
dofile, loadfile, require, package = nil, nil, nil, nil

-- The string metatable is shared by every script.
getmetatable("").__metatable = false

print = pml.log

-- Finalizers run with hooks off, so no budget could stop one: scripts may not install them.
-- (Lua marks an object for finalization only if __gc is present when the metatable is set.)
function setmetatable(t, mt)
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    error("__gc metamethods are not available to scripts", 2)
  end
  return rawsetmetatable(t, mt)
end

-- Stopping or retuning the collector would change it for every script.
function collectgarbage(opt, ...)
  if opt == nil or opt == "collect" or opt == "count" or opt == "step" or opt == "isrunning" then
    return rawcollect(opt, ...)
  end
  error("collectgarbage(\"" .. tostring(opt) .. "\") is not available to scripts", 2)
end

local copied = { "coroutine", "io", "math", "os", "pml", "string", "table", "utf8" }

local function copy(t)
  local c = {}
  for k, v in next, t do c[k] = v end
  return c
end

return function(dir)
  local env = {}
  for _, name in ipairs(copied) do env[name] = copy(base[name]) end
  env._G = env

  local path = libraryPath
  if dir then path = path .. ";" .. dir .. "/?.lua;" .. dir .. "/?/init.lua" end
  local loaded = {}
  local function require(name)
    if type(name) ~= "string" then
      error("bad argument #1 to 'require' (string expected, got " .. type(name) .. ")", 2)
    end
    local value = loaded[name]
    if value ~= nil then return value end
    local file, tried = searchpath(name, path)
    if not file then error("module '" .. name .. "' not found:" .. tried, 2) end
    local chunk, message = rawloadfile(file, "t", env)
    if not chunk then error(message, 0) end
    value = chunk(name, file)
    if value == nil then value = true end
    loaded[name] = value
    return value
  end
  env.require = require

  -- pml.autoscale is lua/pml/autoscale.lua, loaded on first use: scripts that never touch it pay
  -- nothing, and it is the very table `require "pml.autoscale"` gives this environment (through
  -- the local require, which a script's own global `require` cannot replace).
  rawsetmetatable(env.pml, {
    __metatable = false,
    __index = function(t, key)
      if key ~= "autoscale" then return nil end
      local value = require("pml.autoscale")
      rawset(t, key, value)
      return value
    end,
  })

  -- Text only (a crafted binary chunk can crash the VM), and this environment by default.
  function env.load(chunk, chunkname, _, e)
    if e == nil then e = env end
    return rawload(chunk, chunkname, "t", e)
  end

  return rawsetmetatable(env, { __index = base, __metatable = false })
end
"""#
