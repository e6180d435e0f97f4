-- sluice: one decision, atomically (see src/script.rs for the contract).
--
-- KEYS: nb bucket keys, then ns slot keys, then optionally the lease record
-- and the lease index (sorted set of live leases, for the gauge).
-- ARGV[1] pinned clock in ns ("" = Redis TIME), ARGV[2] test offset in ns,
-- ARGV[3] nb, ARGV[4] ns, ARGV[5] "1" for a dry run,
-- then per bucket: emission ns, tau ns, cost, shadow, impossible, extra units,
-- then per slot: max, shadow,
-- then (when slots or a lease record are given) lease id, lease ttl ns.
-- Returns {committed, per bucket: d before, d after, extra granted, per slot:
-- holders before, lease expiry µs}; d = max(TAT - now, 0) in ns.
--
local nb, ns, dry = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5] == '1'
local a = 6
local ok = true
local d, inc, allow, em, tau, extra = {}, {}, {}, {}, {}, {}
for i = 1, nb do
  em[i], tau[i] = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local cost, shadow, impossible = tonumber(ARGV[a + 2]), ARGV[a + 3] == '1', ARGV[a + 4] == '1'
  extra[i] = tonumber(ARGV[a + 5])
  a = a + 6
  d[i] = delta(redis.call('GET', KEYS[i]))
  inc[i] = cost * em[i]
  allow[i] = (not impossible) and (d[i] + inc[i] <= tau[i])
  if not allow[i] and not shadow then ok = false end
end

local now_us = now_s * 1000000 + math.floor(now_n / 1000)
local held, room = {}, {}
for j = 1, ns do
  local k = KEYS[nb + j]
  local max, shadow = tonumber(ARGV[a]), ARGV[a + 1] == '1'
  a = a + 2
  redis.call('ZREMRANGEBYSCORE', k, '-inf', now_us)
  held[j] = redis.call('ZCARD', k)
  room[j] = held[j] < max
  if not room[j] and not shadow then ok = false end
end

local out = {0}
local lease_exp = 0
local commit = ok and not dry
for i = 1, nb do
  local after, got = d[i], 0
  if commit and allow[i] then
    after = d[i] + inc[i]
    -- Local admission: as many extra units as the bucket holds, up to `extra`.
    if extra[i] > 0 then
      got = math.floor((tau[i] - after) / em[i])
      if got * em[i] > tau[i] - after then got = got - 1 end
      if got > extra[i] then got = extra[i] end
      if got < 0 then got = 0 end
      after = after + got * em[i]
    end
    -- The key lives until its TAT: an idle GCRA key is the same as no key.
    redis.call('SET', KEYS[i], absolute(after), 'PX', math.floor(after / 1000000) + 1 + margin)
  end
  out[#out + 1] = d[i]
  out[#out + 1] = after
  out[#out + 1] = got
end
for j = 1, ns do out[#out + 1] = held[j] end

if commit then
  out[1] = 1
  local lease_key = KEYS[nb + ns + 1]
  if ns > 0 or lease_key then
    local id, ttl = ARGV[a], tonumber(ARGV[a + 1])
    local exp_us = now_s * 1000000 + math.floor((now_n + ttl) / 1000)
    local taken = {}
    for j = 1, ns do
      if room[j] then
        local k = KEYS[nb + j]
        redis.call('ZADD', k, exp_us, id)
        local top = redis.call('ZRANGE', k, -1, -1, 'WITHSCORES')
        redis.call('PEXPIRE', k, math.floor((tonumber(top[2]) - now_us) / 1000) + 1 + margin)
        taken[#taken + 1] = k
      end
    end
    if lease_key then
      taken[#taken + 1] = ''
      redis.call('SET', lease_key, exp_us .. '\n' .. table.concat(taken, '\n'), 'PX', math.floor(ttl / 1000000) + 1 + margin)
      local index = KEYS[nb + ns + 2]
      if index then
        redis.call('ZADD', index, exp_us, id)
        redis.call('ZREMRANGEBYSCORE', index, '-inf', now_us)
      end
    end
    lease_exp = exp_us
  end
end
-- Last: the lease's expiry in µs of the script's clock (0: none), for a
-- caller that writes the lease record itself (Cluster).
out[#out + 1] = lease_exp
return out
