-- Destinations of one index (every destination, or a tenant's) by state, with the webhooks they owe and hold, in
-- one step: a dashboard's figures without a record leaving Redis. The state is read as state_of() reads it.
-- KEYS (IndexKeys): index
-- ARGV (CountArgs): key_head, key_tail
-- index is every destination of a partition, or a tenant's; key_head and key_tail are what goes before and after an
-- id in its keys' names
-- Returns {healthy, degraded, open, paused, owed, held}.
-- Leases live in flight until a time by Redis's clock (see redis_now in clock.lua): read by it.
local now_ms = math.floor(redis_now(nil) * 1000)
local counts = {healthy = 0, degraded = 0, open = 0, paused = 0}
local owed, held = 0, 0
local cursor = '0'
repeat
    local page = redis.call('SSCAN', KEYS[1], cursor, 'COUNT', 1000)
    cursor = page[1]
    for _, id in ipairs(page[2]) do
        local tag = ARGV[1] .. id .. ARGV[2]
        local v = redis.call('HMGET', tag .. 'meta', 'tenant', 'paused', 'opened_at', 'failures', 'last_failure_at',
            'last_success_at')
        if v[1] then
            local state = 'healthy'
            if v[2] == '1' then
                state = 'paused'
            elseif v[3] then
                state = 'open'
            elseif (tonumber(v[4]) or 0) > 0 or (v[5] and (not v[6] or tonumber(v[5]) > tonumber(v[6]))) then
                state = 'degraded'
            end
            counts[state] = counts[state] + 1
            local here = redis.call('ZCARD', tag .. 'due') + redis.call('ZCARD', tag .. 'flight')
            owed = owed + here
            if state == 'open' or state == 'paused' then
                held = held + here - redis.call('ZCOUNT', tag .. 'flight', now_ms + 1, '+inf')
            end
        end
    end
until cursor == '0'
return {counts.healthy, counts.degraded, counts.open, counts.paused, owed, held}
