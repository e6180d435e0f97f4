-- sluice: takes a lease record. KEYS[1] the record, KEYS[2] (optional) the
-- lease index; ARGV[1] pinned clock ("" = TIME), ARGV[2] test offset,
-- ARGV[3] the lease id (member of the index). Returns {live, slot keys
-- joined by "\n"}: live is 0 when the record is missing or its lease has
-- lapsed.
if KEYS[2] then redis.call('ZREM', KEYS[2], ARGV[3]) end
local rec = redis.call('GET', KEYS[1])
if not rec then return {0, ''} end
redis.call('DEL', KEYS[1])
local now_us = now_s * 1000000 + math.floor(now_n / 1000)
local nl = string.find(rec, '\n', 1, true)
local exp = tonumber(string.sub(rec, 1, (nl or (#rec + 1)) - 1))
local keys = nl and string.sub(rec, nl + 1) or ''
if exp <= now_us then return {0, keys} end
return {1, keys}
