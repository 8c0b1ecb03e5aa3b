/// The sandbox, in Lua: run once per state with the full globals (see `pml_setup`), and the C
/// helpers as its argument (`native`: open, guard, missing).
///
/// It removes what scripts must not reach, and returns `newEnv(dir)`: the environment table one
/// app file (or the library environment, with no `dir`) runs in. Globals a script sets land in its
/// own environment; library tables are copied per environment, so no script can clobber another's.
/// What scripts can and cannot do is listed in README.md ("What scripts can do"): keep both in step.
let sandboxPrelude = #"""
local native = ...
local base = _G
local ipairs, next, type, error, tostring, rawget, rawset = ipairs, next, type, error, tostring, rawget, rawset
local tointeger, concat = math.tointeger, table.concat
local rawload = load
local rawsetmetatable, rawcollect = setmetatable, collectgarbage
local libraryPath = package.path

-- Process-wide or sandbox-escaping functions; pml.spawn replaces the process ones.
os.exit, os.execute, os.setlocale, io.popen = nil, nil, nil, nil
-- Each environment gets its own require (Lua files only, from the library and app folders).
dofile, loadfile, require, package = nil, nil, nil, nil

-- (C has locked the string and file metatables: getmetatable answers false for both.)
print = pml.log

-- Finalizers run with hooks off, so no budget could stop one: scripts may not install them.
-- (Lua marks an object for finalization only if __gc is present when the metatable is set, and
-- looks it up raw; false counts as present.)
function setmetatable(t, mt)
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    error("__gc metamethods are not available to scripts", 2)
  end
  return rawsetmetatable(t, mt)
end

-- Stopping or retuning the collector would change it for every script. A step is at most 1 MiB
-- of work (Lua multiplies the size by 1024 without an overflow check).
function collectgarbage(opt, arg, ...)
  if opt == "step" then
    local n = arg == nil and 0 or tointeger(arg)
    if n == nil or n < 0 or n > 1024 then
      error("collectgarbage(\"step\", n): n must be an integer from 0 to 1024", 2)
    end
    return rawcollect("step", n)
  end
  if opt == nil or opt == "collect" or opt == "count" or opt == "isrunning" then
    return rawcollect(opt, arg, ...)
  end
  error("collectgarbage(\"" .. tostring(opt) .. "\") is not available to scripts", 2)
end

-- Closing or resuming a coroutine runs its code on top of the C stack; Lua 5.4.4 does not bound
-- a chain of coroutine.close calls (see pml_stack_guard).
coroutine.close = native.guard(coroutine.close, "coroutine.close")
coroutine.resume = native.guard(coroutine.resume, "coroutine.resume")

-- Files: regular files only, opened without blocking (native.open); no standard input or output
-- (a terminal read or a full pipe would block the supervisor): the default files start closed.
local open, fileType = native.open, io.type
local rawinput, rawoutput, rawread, rawwrite, rawlines = io.input, io.output, io.read, io.write, io.lines
io.open, io.stdin, io.stdout, io.stderr = open, nil, nil, nil

local function checkDefault(get, fn, what)
  if fileType(get()) ~= "file" then
    error(fn .. ": no default " .. what .. " file (scripts have no standard input or output; open a file with io.open)", 3)
  end
end

local function fileArgument(file, mode, fn)
  if type(file) ~= "string" then return file end
  local handle, message = open(file, mode)
  if not handle then error(fn .. ": " .. message, 3) end
  return handle
end

function io.input(file)
  if file == nil then return rawinput() end
  return rawinput(fileArgument(file, "r", "io.input"))
end

function io.output(file)
  if file == nil then return rawoutput() end
  return rawoutput(fileArgument(file, "w", "io.output"))
end

function io.read(...)
  checkDefault(rawinput, "io.read", "input")
  return rawread(...)
end

function io.write(...)
  checkDefault(rawoutput, "io.write", "output")
  return rawwrite(...)
end

local function closeAtEnd(file, first, ...)
  if first == nil and fileType(file) == "file" then file:close() end
  return first, ...
end

-- As io.lines: the file closes at its end, or with the for loop (the fourth value).
function io.lines(name, ...)
  if name == nil then
    checkDefault(rawinput, "io.lines", "input")
    return rawlines(nil, ...)
  end
  local file = fileArgument(name, "r", "io.lines")
  local nextLine = file:lines(...)
  return function() return closeAtEnd(file, nextLine()) end, nil, nil, file
end

-- require's search and load, through the same open: a FIFO on the path cannot block it.
local function readSource(file)
  local handle, message, code = open(file, "r")
  if not handle then return nil, message, native.missing[code] == true end
  local text, readError = handle:read("a")
  handle:close()
  if not text then return nil, file .. ": " .. tostring(readError), false end
  if text:sub(1, 3) == "\239\187\191" then text = text:sub(4) end -- a UTF-8 byte-order mark
  if text:sub(1, 1) == "#" then text = "--" .. text end -- a "#!" line (kept, so lines stay right)
  return text
end

local function searchSource(name, path)
  local stem = name:gsub("%.", "/")
  local tried = {}
  for template in path:gmatch("[^;]+") do
    local file = template:gsub("%?", function() return stem end)
    local text, message, missing = readSource(file)
    if text then return file, text end
    if not missing then error("module '" .. name .. "': " .. message, 3) end
    tried[#tried + 1] = "\n\tno file '" .. file .. "'"
  end
  return nil, concat(tried)
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
    local file, text = searchSource(name, path)
    if not file then error("module '" .. name .. "' not found:" .. text, 2) end
    local chunk, message = rawload(text, "@" .. file, "t", env)
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
