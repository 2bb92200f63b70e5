-- An operator's or owner's change to one destination, then its place in READY again.
-- KEYS (AdminKeys): dst_meta, dst_due, dst_flight, dst_deadline
-- ARGV (AdminArgs): flow_now, flow_settings, destination_id, op, max_in_flight, rate_per_s
-- flow_now and flow_settings are the two of dst_init; op is 'pause' | 'resume' | 'set'; for set, max_in_flight
-- ('' keeps it) and rate_per_s ('' keeps it, 'none' removes it)
-- Returns 0 when there is no such destination.
dst_init(ARGV[1], ARGV[2])
local d = {id = ARGV[3], meta = KEYS[1], due = KEYS[2], flight = KEYS[3], deadline = KEYS[4]}
if redis.call('HEXISTS', d.meta, 'tenant') == 0 then
    return 0
end
local op = ARGV[4]
if op == 'pause' then
    redis.call('HSET', d.meta, 'paused', '1')
elseif op == 'resume' then
    redis.call('HDEL', d.meta, 'paused')
elseif op == 'set' then
    if ARGV[5] ~= '' then
        redis.call('HSET', d.meta, 'max_in_flight', ARGV[5])
    end
    if ARGV[6] == 'none' then
        redis.call('HDEL', d.meta, 'rate_per_s', 'tokens', 'tokens_at')
    elseif ARGV[6] ~= '' then
        redis.call('HSET', d.meta, 'rate_per_s', ARGV[6])
        redis.call('HDEL', d.meta, 'tokens', 'tokens_at')
    end
end
dst_refresh(d)
return 1
