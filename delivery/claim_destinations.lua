-- Lease the attempts that ready destinations let start now, within each one's caps.
-- KEYS (ReadyKeys): ready
-- ARGV (ReadyArgs): flow_now, flow_settings, budget, most_destinations, delivery_prefix
-- ready is the partition's ready destinations (the other keys derive from its tag); flow_now and flow_settings are
-- the two of dst_init; budget the most attempts in all, most_destinations the most destinations visited
-- Returns a flat list: destination id, event id, kind ('send' | 'probe' | 'expire'), lease token, record, ...
-- Work grows with the destinations that are ready, never with the webhooks a destination holds.
-- Runs when the store is full: its first write is this ZREM of a member that never exists, which Redis lets
-- through at maxmemory (see delivery/store_refusals.py for why this step may, and which may not).
-- Entries moved between a destination's sets: sending owed webhooks frees their stored events once recorded.
redis.call('ZREM', READY, '')
dst_init(ARGV[1], ARGV[2])
local budget = tonumber(ARGV[3])
local result = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', READY, '-inf', NOW, 'LIMIT', 0, tonumber(ARGV[4]))) do
    if budget <= 0 then
        break
    end
    local d = dst_keys(id)
    if redis.call('EXISTS', d.meta) == 0 then
        redis.call('ZREM', READY, id)
    else
        local out = {}
        budget = budget - dst_claim(d, budget, out)
        for _, item in ipairs(out) do
            local record = redis.call('GET', ARGV[5] .. item[1])
            if record then
                table.insert(result, id)
                table.insert(result, item[1])
                table.insert(result, item[2])
                table.insert(result, LEASE_MS)
                table.insert(result, record)
            else
                -- settled meanwhile (an ack, a purge): nothing to send (a probe that was this is no probe: see dst_read)
                redis.call('ZREM', d.flight, item[1])
                redis.call('ZREM', d.deadline, item[1])
                dst_refresh(d)
            end
        end
    end
end
return result
