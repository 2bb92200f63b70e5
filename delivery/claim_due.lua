-- Lease the webhooks that are due and return their records.
-- KEYS[1]: the due sorted set; ARGV: now, limit, lease_until, delivery key prefix
-- A leased webhook stays in the set with its score pushed to lease_until, so a worker that dies
-- mid-attempt only delays it: the lease runs out and another worker claims it.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
    local record = redis.call('GET', ARGV[4] .. id)
    if record then
        redis.call('ZADD', KEYS[1], ARGV[3], id)
        table.insert(out, record)
    else
        redis.call('ZREM', KEYS[1], id)
    end
end
return out
