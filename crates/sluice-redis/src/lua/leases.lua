-- sluice: live leases. KEYS[1] the lease index (sorted set: lease id scored
-- by expiry in µs); ARGV[1] pinned clock in ns ("" = TIME), ARGV[2] test
-- offset in ns. Drops lapsed entries, returns how many are left.
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
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_s * 1000000 + math.floor(now_n / 1000))
return redis.call('ZCARD', KEYS[1])
