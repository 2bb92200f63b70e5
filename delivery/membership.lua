-- A membership set of live processes (sorted set: member -> unix time its heartbeat expires). Every process writes
-- and reads it, so Redis's clock times it: a host whose clock is off neither drops live members nor keeps dead ones.
-- KEYS (MembershipKeys): members
-- ARGV (MembershipArgs): op, member, ttl_s
-- op 'beat' renews member's heartbeat for ttl_s and drops those expired; 'read' (member and ttl_s empty) only reads
-- Returns the members alive.
local now = redis_now(nil)
if ARGV[1] == 'beat' then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
    return redis.call('ZRANGE', KEYS[1], 0, -1)
end
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
