-- Record one delivery attempt and what follows it, in one step: the attempt log, the delivery's schedule, its
-- destination's slot and breaker, and the dead letter when it died.
-- KEYS (RecordKeys): attempts, stats, due, delivery, latency, dead_letter, dead_letters, tenant_dead_letters,
--   dead_letter_of_event, dst_meta, dst_due, dst_flight, dst_deadline, secrets, webhook_head, webhook_line,
--   tenant_stats, steps
-- ARGV (RecordArgs): flow_now, flow_settings, attempt, attempts_ttl_s, attempt_counter, verdict, event_id,
--   destination_id, destination_tenant, destination_origin, token, outcome, error, hold_s, skipped_counter, at,
--   retry_delivery, retry_in_s, latency_bucket, latency_s, dead_letter_id, dead_letter, dead_at_ms,
--   dead_lettered_counter, dead_letter_retention_s, dead_letter_counter, dead_step
-- due is the general schedule; secrets the tenant's signing secrets; steps the task's delivery steps
-- (dead-lettered, replayed). flow_now ('' for Redis's clock, see redis_now) and flow_settings are the two of
-- dst_init; attempt is '' when none was made; attempt_counter the stats field it counts in ('' for none); verdict
-- 'delivered' | 'retry' | 'dead' | 'dropped' | 'noted'; token the lease of the attempt ('' for none); outcome what
-- moves the breaker ('ok' | 'fail' | 'other' | 'none'); hold_s how long a Retry-After holds the destination ('' for
-- none); at the time people read (RFC 3339). Then what only one verdict reads ('' for the others):
--   retry:     retry_delivery (the delivery record, its attempts counted), retry_in_s (due that long from now)
--   delivered: latency_bucket, latency_s, dead_letter_id (the replayed dead letter it came from, '' for none)
--   dead:      dead_letter_id, dead_letter, dead_at_ms (the time it shows, its indexes' score; they are trimmed by
--              Redis's clock), dead_lettered_counter (the stats counter), dead_letter_retention_s (how long dead
--              letters are kept), dead_letter_counter (of its reason),
--              dead_step (its dead-lettered step, kept attempts_ttl_s, as the attempts)
--   noted:     nothing (an unacked push: the webhook is owed to its destination from now on)
--   dropped:   nothing (a WebSocket-only event nobody acked: it stays in the log for resume and polling)
-- Returns {status, change[, event id, record, lease token, the tenant's secrets]}: status 'ok' or 'fenced' (another
-- attempt holds the delivery now: only the attempt was written down); change is 'opened', 'recovered' or ''; then
-- the webhook leased to the caller in the same step, when there is one that may start now: the destination's next
-- due webhook after an attempt, or a noted push's own webhook. A settled webhook (delivered or dead) lets the next
-- of its task be owed; a failed progress webhook with a newer one of its task waiting is not tried again but
-- skipped (task_line.lua).
-- Runs when the store is full: its first write is this ZREM of a member that never exists, which Redis lets
-- through at maxmemory (see delivery/store_refusals.py for why this step may, and which may not).
-- An attempt already made is written down (else a delivered webhook would be sent again); a settled one frees
-- its stored event, more than its attempt entry takes.
redis.call('ZREM', KEYS[3], '')
dst_init(ARGV[1], ARGV[2])
local d = {id = ARGV[8], meta = KEYS[10], due = KEYS[11], flight = KEYS[12], deadline = KEYS[13]}
local L = {head = KEYS[15], line = KEYS[16], ttl = tonumber(ARGV[4]), attempts = KEYS[1], stats = KEYS[2],
           skipped = ARGV[15], at = ARGV[16], now = NOW, tenant_stats = KEYS[17]}
local verdict = ARGV[6]
local event_id = ARGV[7]
if ARGV[3] ~= '' then
    redis.call('RPUSH', KEYS[1], ARGV[3])
    redis.call('EXPIRE', KEYS[1], ARGV[4])
end
if ARGV[5] ~= '' then
    redis.call('HINCRBY', KEYS[2], ARGV[5], 1)
    redis.call('HINCRBY', KEYS[17], ARGV[5], 1)
end
if verdict == 'noted' then
    redis.call('ZREM', KEYS[3], event_id)
    if redis.call('EXISTS', KEYS[4]) == 0 or dst_owes(d, event_id) then
        return {'ok', ''}
    end
    local token = dst_accept(d, event_id, ARGV[9], ARGV[10])
    if token then
        return {'ok', '', event_id, redis.call('GET', KEYS[4]), token, redis.call('GET', KEYS[14])}
    end
    return {'ok', ''}
end
if verdict == 'dropped' then
    redis.call('ZREM', KEYS[3], event_id)
    redis.call('DEL', KEYS[4])
    return {'ok', ''}
end
local holds = dst_holds(d, event_id, ARGV[11])
if holds == false or (holds == nil and redis.call('EXISTS', KEYS[4]) == 0) then
    return {'fenced', ''}
end
local change = dst_settle(d, event_id, ARGV[12], ARGV[13], ARGV[14] ~= '' and NOW + tonumber(ARGV[14]) or '')
if verdict == 'retry' and line_superseded(L, event_id) then
    local ok, decoded = pcall(cjson.decode, ARGV[17])
    line_skip(L, event_id, d, ok and type(decoded) == 'table' and tonumber(decoded.attempts) or 0)
    line_advance(L, event_id, d)
elseif verdict == 'retry' then
    redis.call('SET', KEYS[4], ARGV[17])
    dst_owe(d, event_id, NOW + tonumber(ARGV[18]))
else
    redis.call('ZREM', KEYS[3], event_id)
    redis.call('DEL', KEYS[4])
    redis.call('ZREM', KEYS[13], event_id)
end
if verdict == 'delivered' then
    redis.call('HINCRBY', KEYS[5], ARGV[19], 1)
    redis.call('HINCRBYFLOAT', KEYS[5], 'sum', ARGV[20])
    redis.call('HINCRBY', KEYS[17], 'latency:' .. ARGV[19], 1)
    local replayed = ARGV[21]
    if replayed ~= '' then
        redis.call('DEL', KEYS[6])
        redis.call('ZREM', KEYS[7], replayed)
        redis.call('ZREM', KEYS[8], replayed)
        redis.call('DEL', KEYS[9])
    end
elseif verdict == 'dead' then
    -- kept retention_s. The tenant's index drops entries older than that as new ones come (workers trim the
    -- global index once a minute: they know no tenants)
    local retention_s = tonumber(ARGV[25])
    local cutoff_ms = NOW_MS - retention_s * 1000
    redis.call('SET', KEYS[6], ARGV[22], 'EX', retention_s)
    redis.call('ZADD', KEYS[7], ARGV[23], ARGV[21])
    redis.call('ZADD', KEYS[8], ARGV[23], ARGV[21])
    redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', cutoff_ms)
    redis.call('EXPIRE', KEYS[8], retention_s)
    redis.call('SET', KEYS[9], ARGV[21], 'EX', retention_s)
    redis.call('HINCRBY', KEYS[2], ARGV[24], 1)
    redis.call('HINCRBY', KEYS[2], ARGV[26], 1)
    redis.call('HINCRBY', KEYS[17], ARGV[24], 1)
    redis.call('HINCRBY', KEYS[17], ARGV[26], 1)
    redis.call('RPUSH', KEYS[18], ARGV[27])
    redis.call('EXPIRE', KEYS[18], ARGV[4])
end
if verdict == 'delivered' or verdict == 'dead' then
    line_advance(L, event_id, d)
end
-- The slot this attempt held goes straight to the destination's next due webhook, leased to the caller, so a
-- busy destination's backlog flows at the pace of its receiver rather than of the claim's polling.
-- With nothing waiting, READY needs no change: its score stays at or before the next lease to run out, and the
-- claim's visit then sets it right (or takes the destination out).
local next_id, next_record, next_token
if redis.call('ZCARD', d.due) > 0 then
    -- (the record key prefix: this delivery's key without its event id)
    next_id, next_record, next_token = dst_next(d, string.sub(KEYS[4], 1, #KEYS[4] - #event_id))
    dst_refresh(d)
end
if next_id then
    return {'ok', change, next_id, next_record, next_token, redis.call('GET', KEYS[14])}
end
return {'ok', change}
