-- sluice: takes a lease record. KEYS[1] the record, KEYS[2] (optional) the
-- lease index; ARGV[1] pinned clock ("" = TIME), ARGV[2] test offset,
-- ARGV[3] the lease id (member of the index). Returns {live, slot keys
-- joined by "\n"}: live is 0 when the record is missing or its lease has
-- lapsed.
if KEYS[2] then redis.call('ZREM', KEYS[2], ARGV[3]) end
local rec = redis.call('GET', KEYS[1])
if not rec then return {0, ''} end
redis.call('DEL', KEYS[1])
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
local now_us = now_s * 1000000 + math.floor(now_n / 1000)
local nl = string.find(rec, '\n', 1, true)
local exp = tonumber(string.sub(rec, 1, (nl or (#rec + 1)) - 1))
local keys = nl and string.sub(rec, nl + 1) or ''
if exp <= now_us then return {0, keys} end
return {1, keys}
