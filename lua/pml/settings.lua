-- pml.settings: what the shipped plugins share for reading their settings from the daemon's
-- environment (`local settings = require "pml.settings"`).
local settings = {}

settings.units = { [""] = 1, K = 1024, M = 1024 ^ 2, G = 1024 ^ 3, T = 1024 ^ 4 }

-- PML_X_<APP> if set (app upper-cased, anything but A-Z and 0-9 as "_"), else PML_X, else nil.
function settings.get(key, app)
  if app then
    local v = os.getenv(key .. "_" .. (app:upper():gsub("[^A-Z0-9]", "_")))
    if v and v ~= "" then return v end
  end
  local v = os.getenv(key)
  if v and v ~= "" then return v end
  return nil
end

-- "300M" -> 314572800 (K, M, G, T; an optional B or iB); nil when it is not a size.
function settings.bytes(text)
  local n, unit = text:upper():match("^%s*(%d+%.?%d*)%s*([KMGT]?)I?B?%s*$")
  if not n then return nil end
  return math.floor(tonumber(n) * settings.units[unit])
end

-- 314572800 -> "300.0M".
function settings.human(bytes)
  for _, u in ipairs({ "G", "M", "K" }) do
    if bytes >= settings.units[u] then return ("%.1f%s"):format(bytes / settings.units[u], u) end
  end
  return tostring(bytes) .. "B"
end

-- A pml.warn that says each message once, prefixed with the plugin's name.
function settings.warnOnce(prefix)
  local warned = {}
  return function(message)
    if warned[message] then return end
    warned[message] = true
    pml.warn(prefix .. ": " .. message)
  end
end

return settings
