-- sluice: takes back a committed part of a decision whose other part (in
-- another Cluster slot) denied. KEYS: nb bucket keys, then slot keys.
-- ARGV[1] pinned clock ("" = TIME), ARGV[2] test offset, ARGV[3] nb,
-- then per bucket the nanoseconds added; ARGV[4 + nb] the lease id to remove
-- from the slot keys.
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
local function absolute(d)
  local total = now_n + d
  local r = math.fmod(total, E9)
  return string.format('%d%09d', now_s + (total - r) / E9, r)
end
local function put(k, d)
  if d <= 0 then redis.call('DEL', k) else
    redis.call('SET', k, absolute(d), 'PX', math.floor(d / 1000000) + 1 + margin)
  end
end

local nb = tonumber(ARGV[3])
for i = 1, nb do
  -- Consumption is additive: subtracting exactly what was added restores the
  -- TAT exactly when nobody consumed since (an idle one becomes no key).
  local cur = redis.call('GET', KEYS[i])
  if cur then put(KEYS[i], delta(cur) - tonumber(ARGV[3 + i])) end
end
local id = ARGV[4 + nb]
for j = nb + 1, #KEYS do redis.call('ZREM', KEYS[j], id) end
return 1
