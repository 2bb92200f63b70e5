-- Take one of a tenant's stream places, if it has one left.
-- KEYS[1]: the tenant's streams (sorted set: member -> unix time it expires).
-- ARGV: member, now (s), expires at (s), the tenant's limit, the key's time to live (s).
-- Returns 1 when taken (or already held), 0 when the tenant has its limit open already.
local member = ARGV[1]
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if not redis.call('ZSCORE', KEYS[1], member) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
    return 0
end
redis.call('ZADD', KEYS[1], ARGV[3], member)
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
