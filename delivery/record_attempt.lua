-- Record one delivery attempt and what follows it, in one step: the attempt log, the delivery's schedule, its
-- destination's slot and breaker, and the dead letter when it died.
-- KEYS: attempts, stats, due (the general schedule), delivery, latency, dead_letter, dead_letters,
--       dead_letters_of_tenant, dead_letter_of_event, then the destination's meta, due, flight, deadline, and the
--       tenant's signing secrets
-- ARGV: the seven of dst_init,
--       8 attempt ('' when none was made), 9 attempts_ttl_s, 10 outcome_field ('' for none),
--       11 verdict ('delivered' | 'retry' | 'dead' | 'dropped' | 'noted'), 12 event_id,
--       13 destination id, 14 tenant, 15 origin, 16 lease token ('' for none), 17 breaker outcome ('ok' | 'fail' |
--       'other' | 'none'), 18 error text, 19 hold_until ('' for none), then by verdict:
--         retry:     20 delivery, 21 due_at
--         delivered: 20 latency_bucket, 21 latency_s, 22 replayed dead letter id ('' for none)
--         dead:      20 dead letter, 21 dead letter id, 22 dead_at_ms, 23 dead_lettered_field (the stats counter),
--                    24 retention_s (how long dead letters are kept)
--         noted:     nothing (an unacked push: the webhook is owed to its destination from now on)
--         dropped:   nothing (a WebSocket-only event nobody acked: it stays in the log for resume and polling)
-- Returns {status, change, token[, next event id, its record, its lease token, the tenant's secrets]}: status 'ok', 'admitted' (noted,
-- and leased to the caller at once with token) or 'fenced' (another attempt holds the delivery now: only the
-- attempt was written down); change is 'opened', 'recovered' or ''; the next webhook of the destination, when
-- one is due and may start, is leased to the caller in the same step.
dst_init(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
local d = {id = ARGV[13], meta = KEYS[10], due = KEYS[11], flight = KEYS[12], deadline = KEYS[13]}
local verdict = ARGV[11]
local event_id = ARGV[12]
if ARGV[8] ~= '' then
    redis.call('RPUSH', KEYS[1], ARGV[8])
    redis.call('EXPIRE', KEYS[1], ARGV[9])
end
if ARGV[10] ~= '' then
    redis.call('HINCRBY', KEYS[2], ARGV[10], 1)
end
if verdict == 'noted' then
    redis.call('ZREM', KEYS[3], event_id)
    if redis.call('EXISTS', KEYS[4]) == 0 or dst_owes(d, event_id) then
        return {'ok', ''}
    end
    dst_ensure(d, ARGV[14], ARGV[15])
    local token = dst_admit(d, event_id)
    if not token then
        dst_owe(d, event_id, NOW)
    end
    if token then
        return {'admitted', '', token}
    end
    return {'ok', ''}
end
if verdict == 'dropped' then
    redis.call('ZREM', KEYS[3], event_id)
    redis.call('DEL', KEYS[4])
    return {'ok', ''}
end
local holds = dst_holds(d, event_id, ARGV[16])
if holds == false or (holds == nil and redis.call('EXISTS', KEYS[4]) == 0) then
    return {'fenced', ''}
end
local change = dst_settle(d, event_id, ARGV[17], ARGV[18], ARGV[19])
if verdict == 'retry' then
    redis.call('SET', KEYS[4], ARGV[20])
    dst_owe(d, event_id, ARGV[21])
else
    redis.call('ZREM', KEYS[3], event_id)
    redis.call('DEL', KEYS[4])
    redis.call('ZREM', KEYS[13], event_id)
end
if verdict == 'delivered' then
    redis.call('HINCRBY', KEYS[5], ARGV[20], 1)
    redis.call('HINCRBYFLOAT', KEYS[5], 'sum', ARGV[21])
    local replayed = ARGV[22]
    if replayed ~= '' then
        redis.call('DEL', KEYS[6])
        redis.call('ZREM', KEYS[7], replayed)
        redis.call('ZREM', KEYS[8], replayed)
        redis.call('DEL', KEYS[9])
    end
elseif verdict == 'dead' then
    -- kept retention_s. The tenant's index drops entries older than that as new ones come (workers trim the
    -- global index once a minute: they know no tenants)
    local retention_s = tonumber(ARGV[24])
    local cutoff_ms = tonumber(ARGV[22]) - retention_s * 1000
    redis.call('SET', KEYS[6], ARGV[20], 'EX', retention_s)
    redis.call('ZADD', KEYS[7], ARGV[22], ARGV[21])
    redis.call('ZADD', KEYS[8], ARGV[22], ARGV[21])
    redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', cutoff_ms)
    redis.call('EXPIRE', KEYS[8], retention_s)
    redis.call('SET', KEYS[9], ARGV[21], 'EX', retention_s)
    redis.call('HINCRBY', KEYS[2], ARGV[23], 1)
end
-- The slot this attempt held goes straight to the destination's next due webhook, leased to the caller, so a
-- busy destination's backlog flows at the pace of its receiver rather than of the claim's polling.
-- With nothing waiting, READY needs no change: its score stays at or before the next lease to run out, and the
-- claim's visit then sets it right (or takes the destination out).
local next_id, next_record, next_token
if redis.call('ZCARD', d.due) > 0 then
    next_id, next_record, next_token = dst_next(d, string.sub(KEYS[4], 1, #KEYS[4] - #event_id))
    dst_refresh(d)
end
if next_id then
    return {'ok', change, '', next_id, next_record, next_token, redis.call('GET', KEYS[14])}
end
return {'ok', change}
