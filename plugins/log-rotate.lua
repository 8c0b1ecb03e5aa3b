-- log-rotate.lua — size-based rotation of every app's log files (like pm2-logrotate).
--
-- Every PML_LOGROTATE_CHECK_MS it looks at each app's out and err logs
-- ($PML_HOME/logs/<app>-out.log, -err.log). One larger than PML_LOGROTATE_MAX_SIZE is rotated:
-- <log>.1 becomes <log>.2 and so on up to <log>.<KEEP> (the oldest is removed), the log is copied
-- to <log>.1, and then truncated in place. Copy-then-truncate (logrotate's "copytruncate"),
-- because pml keeps each log open in append mode: a renamed log would keep growing under its new
-- name. Lines written between the copy and the truncation (microseconds) are lost. A log that
-- grew to more than twice the limit between two checks keeps only its last 2 × MAX_SIZE bytes
-- (from a line start) in <log>.1, so one check never copies more than that.
-- daemon.log notes each rotation:  [lua] .../log-rotate.lua:NN: log-rotate: rotated .../web-out.log (10.2M)
--
-- Enable: copy or symlink this file into $PML_HOME/plugins (or a folder named in PML_PLUGINS),
--   then `pml plugins reload` (or start the daemon). Settings are environment variables of the
--   daemon: the environment of the pml command that started it.
--
-- Settings:
--   PML_LOGROTATE_MAX_SIZE        rotate above this size: bytes, or with K, M, G (powers of 1024)
--                                 (default 10M)
--   PML_LOGROTATE_MAX_SIZE_<APP>  the same for one app: PML_LOGROTATE_MAX_SIZE_MY_API for
--                                 "my-api" (upper-cased, other characters than A-Z, 0-9 as "_")
--   PML_LOGROTATE_KEEP            rotated files to keep, <log>.1 (newest) to <log>.N (default 5;
--                                 0 only truncates)
--   PML_LOGROTATE_KEEP_<APP>      the same for one app
--   PML_LOGROTATE_CHECK_MS        how often to look, in ms (default 10000)
--
-- Example:
--   ln -s "$PWD/plugins/log-rotate.lua" ~/.pml/plugins/
--   pml kill; PML_LOGROTATE_MAX_SIZE=50M PML_LOGROTATE_KEEP=10 pml start ecosystem.lua

local settings = require "pml.settings"
local setting, parseBytes, human, units = settings.get, settings.bytes, settings.human, settings.units
local warnOnce = settings.warnOnce("log-rotate")

local function maxSizeFor(app)
  local text = setting("PML_LOGROTATE_MAX_SIZE", app)
  local size = text and parseBytes(text)
  if text and (not size or size < 1) then
    warnOnce(("PML_LOGROTATE_MAX_SIZE %q is not a size (like 10M); using 10M"):format(text))
  end
  return (size and size >= 1) and size or 10 * units.M
end

local function keepFor(app)
  local text = setting("PML_LOGROTATE_KEEP", app)
  local keep = math.tointeger(tonumber(text or ""))
  if text and (not keep or keep < 0) then
    warnOnce(("PML_LOGROTATE_KEEP %q is not a count; using 5"):format(text))
  end
  return (keep and keep >= 0) and keep or 5
end

local checkMs = math.tointeger(tonumber(os.getenv("PML_LOGROTATE_CHECK_MS") or "")) or 10000
if checkMs < 1 then checkMs = 10000 end

local CHUNK = 64 * 1024

local function sizeOf(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local size = f:seek("end")
  f:close()
  return size
end

-- Copies `from` to `to` in chunks, up to its end or `limit` bytes: a file of `size` bytes larger
-- than `limit` is copied from a line start near `size - limit`. Returns true, or nil and why.
local function copy(from, to, size, limit)
  local src, err = io.open(from, "rb")
  if not src then return nil, err end
  local dst
  dst, err = io.open(to, "wb")
  if not dst then src:close(); return nil, err end
  local skip = size > limit
  if skip then src:seek("set", size - limit) end
  local left = limit
  while left > 0 do
    local chunk = src:read(math.min(CHUNK, left))
    if not chunk then break end
    left = left - #chunk
    if skip then
      skip = false
      local nl = chunk:find("\n", 1, true)
      chunk = nl and chunk:sub(nl + 1) or chunk
    end
    local ok, werr = dst:write(chunk)
    if not ok then src:close(); dst:close(); return nil, werr end
  end
  src:close()
  dst:close()
  return true
end

local function rotate(path, size, maxSize, keep)
  if keep > 0 then
    os.remove(path .. "." .. keep)
    for i = keep - 1, 1, -1 do os.rename(path .. "." .. i, path .. "." .. (i + 1)) end
    local ok, err = copy(path, path .. ".1", size, 2 * maxSize)
    if not ok then
      pml.warn(("log-rotate: cannot copy %s: %s"):format(path, tostring(err)))
      return
    end
  end
  -- "w" truncates the file in place; pml's own descriptor (O_APPEND) goes on at the new end.
  local f, err = io.open(path, "w")
  if not f then
    pml.warn(("log-rotate: cannot truncate %s: %s"):format(path, tostring(err)))
    return
  end
  f:close()
  pml.log(("log-rotate: rotated %s (%s)"):format(path, human(size)))
end

local function check()
  for _, app in ipairs(pml.apps()) do
    local maxSize, keep = maxSizeFor(app.name), keepFor(app.name)
    local seen = {}
    for _, path in ipairs({ app.out_log, app.err_log }) do
      if path and not seen[path] then
        seen[path] = true
        local size = sizeOf(path)
        if size and size > maxSize then rotate(path, size, maxSize, keep) end
      end
    end
  end
end

pml.every(checkMs, check)

return { name = "log-rotate" }
