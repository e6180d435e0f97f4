-- sluice: takes back a committed part of a decision whose other part (in
-- another Cluster slot) denied. KEYS: nb bucket keys, then slot keys.
-- ARGV[1] pinned clock ("" = TIME), ARGV[2] test offset, ARGV[3] nb,
-- then per bucket the nanoseconds added; ARGV[4 + nb] the lease id to remove
-- from the slot keys.
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
