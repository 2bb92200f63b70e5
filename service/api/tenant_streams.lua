-- A tenant's stream places: take one, if the tenant has one left, or push on the expiry of places held.
-- KEYS (StreamsKeys): streams
-- ARGV (StreamsArgs): mode, now, ttl_s, key_ttl_s, member, limit, then each of members: a place held
-- streams is the tenant's sorted set: member -> unix time it expires, by Redis's clock (every API process writes and
-- reads it, so one clock decides when a place of a dead node has expired). mode is 'take' or 'refresh'; now '' for
-- Redis's clock; a place lasts ttl_s; key_ttl_s is the key's time to live (s). Each mode reads what it needs ('' or
-- none in the other):
-- 'take': member (the place to take), limit (the tenant's)
-- 'refresh': members (XX: a place given back meanwhile stays gone)
-- Returns for take 1 when taken (or already held), 0 when the tenant has its limit open already; for refresh 1.
local now = redis_now(ARGV[2])
if ARGV[1] == 'refresh' then
    local expires_at = now + tonumber(ARGV[3])
    for i = 7, #ARGV do
        redis.call('ZADD', KEYS[1], 'XX', expires_at, ARGV[i])
    end
    redis.call('EXPIRE', KEYS[1], ARGV[4])
    return 1
end
local member = ARGV[5]
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], member) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[6]) then
    return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), member)
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
