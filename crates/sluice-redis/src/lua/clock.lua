-- sluice: the clock shared by every script, prepended to each when the
-- store loads them (src/store.rs). ARGV[1] is a pinned clock in ns ("" =
-- Redis TIME) and ARGV[2] a test offset in ns, in every script.
--
-- Times are integers of nanoseconds held as (seconds, nanoseconds) pairs:
-- Lua numbers are doubles, exact only below 2^53, and nanoseconds since the
-- epoch are larger than that. Differences from `now` (at most a bucket's
-- tau, which the caller keeps below 2^53) are exact.
local E9 = 1000000000

local function split(s)
  local n = #s
  if n <= 9 then return 0, tonumber(s) end
  return tonumber(string.sub(s, 1, n - 9)), tonumber(string.sub(s, n - 8))
end

local now_s, now_n
if ARGV[1] ~= '' then
  now_s, now_n = split(ARGV[1])
else
  local t = redis.call('TIME')
  now_s, now_n = tonumber(t[1]), tonumber(t[2]) * 1000
end
local off_s, off_n = split(ARGV[2])
now_s, now_n = now_s + off_s, now_n + off_n
if now_n >= E9 then now_s, now_n = now_s + 1, now_n - E9 end
-- Expiries are in real time; a pinned (test) clock may run slower than real
-- time, so its keys live an hour longer than their TAT.
local margin = (ARGV[1] ~= '') and 3600000 or 0

-- max(tat - now, 0) of a stored TAT.
local function delta(raw)
  if not raw then return 0 end
  local s, n = split(raw)
  local ds = s - now_s
  if ds < -1 then return 0 end
  if ds > 9000000 then ds = 9000000 end
  local d = ds * E9 + (n - now_n)
  if d < 0 then return 0 end
  return d
end

-- The TAT now + d as a decimal string of nanoseconds.
local function absolute(d)
  local total = now_n + d
  local r = math.fmod(total, E9)
  return string.format('%d%09d', now_s + (total - r) / E9, r)
end

