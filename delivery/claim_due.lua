-- Lease the deliveries that are due and return them.
-- KEYS (ClaimKeys): due
-- ARGV (ClaimArgs): now, limit, lease_s, delivery_prefix, ack_prefix
-- due is the partition's sorted set of due deliveries; now '' for Redis's clock (which wrote the due times); the
-- prefixes are those of delivery records and of ack markers
-- Returns a flat list: id, record, pushed, id, record, pushed, ... where pushed is 1 when the delivery was waiting
-- for a WebSocket ack (whose time is now up: the marker is taken, so a late ack no longer settles it).
-- A leased delivery stays in the set with its score pushed to lease_until, so a worker that dies
-- mid-attempt only delays it: the lease runs out and another worker claims it.
-- Runs when the store is full: its first write is this ZREM of a member that never exists, which Redis lets
-- through at maxmemory (see delivery/store_refusals.py for why this step may, and which may not).
-- Scores moved: sending owed webhooks frees their stored events once recorded.
redis.call('ZREM', KEYS[1], '')
local now = redis_now(ARGV[1])
local lease_until = now + tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
    local record = redis.call('GET', ARGV[4] .. id)
    if record then
        redis.call('ZADD', KEYS[1], lease_until, id)
        table.insert(out, id)
        table.insert(out, record)
        table.insert(out, redis.call('DEL', ARGV[5] .. id))
    else
        redis.call('ZREM', KEYS[1], id)
    end
end
return out
