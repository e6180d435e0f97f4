-- sluice: live leases. KEYS[1] the lease index (sorted set: lease id scored
-- by expiry in µs); ARGV[1] pinned clock in ns ("" = TIME), ARGV[2] test
-- offset in ns. Drops lapsed entries, returns how many are left.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_s * 1000000 + math.floor(now_n / 1000))
return redis.call('ZCARD', KEYS[1])
