-- Write a task's new state and one event in one step; for a final event, end the task and owe its delivery.
-- KEYS (AppendKeys): task, events, stats, delivery, due, secrets, subscribers, ack_marker, owed_tasks, lease,
--   open_tasks, requeues, dst_meta, dst_due, dst_flight, dst_deadline, scheduled_tasks, webhook_head,
--   webhook_line, attempts, tenant_stats, tenant_scheduled
-- ARGV (AppendArgs): record, record_ttl_s, event, retention_s, channel, stats_field, delivery, destination_id,
--   event_id, websocket, ack_timeout_s, has_webhook, task_id, run_token, final, flow_now, flow_settings,
--   destination_tenant, destination_origin, read_state, retry_in_s, owed_grace_s, skipped_counter, at, line_kind,
--   publish
-- stats_field and delivery are '' for none; websocket, has_webhook and final are flags ('1' or ''); ack_timeout_s is
-- how long a pushed event waits for its ack; flow_now ('' for Redis's clock, see redis_now) and flow_settings are
-- the two of dst_init; read_state is the stored record expected ('' for none: the run's write); for a retry,
-- retry_in_s is the delay to the next attempt and owed_grace_s the grace after it that the task is owed from ('' for
-- none: the run's lease is given back and the task waits in the scheduled set, as a scheduled submission does);
-- every time they give is counted from Redis's clock; skipped_counter is the counter of skipped webhooks, at the
-- time people read (RFC 3339), line_kind the event's kind in its task's line ('p' for progress, which a newer event
-- supersedes, else 'f'), and publish the publish command (PUBLISH, or SPUBLISH on a cluster)
-- A webhook waits behind any other of its task that is still owed (see task_line.lua): {'lined'}.
-- Only the run that holds the task writes: returns {'ended'} when the task has ended already and {'stolen'}
-- when another run holds its lease, writing nothing. A write from outside any run (a cancel) gives the record
-- it read instead of a run token: {'changed'} when the task has been written since, and the caller reads it
-- again; such a write never leases the webhook (the caller has no engine to send it): it is owed. Else {'none'} when no delivery is owed, or {mode, secrets}:
--   'push'    the task wants WebSocket and (a socket follows it, or it has no webhook): the delivery waits
--             for a socket's ack for ack_timeout_s, then falls back to the webhook;
--   'webhook' the webhook is owed to its destination and, when the destination lets it start now, leased to the
--             caller: {'webhook', secrets, lease token}, so the caller can attempt it at once without another
--             round trip; else {'owed'} (the destination's claim sends it).
local task_id = ARGV[13]
if not redis.call('ZSCORE', KEYS[9], task_id) then
    return {'ended'}
end
-- Every time this step writes (the retry's, the ack's, the webhook's) counts from Redis's clock (see redis_now).
local now = redis_now(ARGV[16])
local ack_due_at = now + tonumber(ARGV[11])
local outside = ARGV[20] ~= ''
if outside then
    if redis.call('GET', KEYS[1]) ~= ARGV[20] then
        return {'changed'}
    end
else
    local holder = redis.call('GET', KEYS[10])
    if holder and holder ~= ARGV[14] then
        return {'stolen'}
    end
end
if redis.call('LINDEX', KEYS[2], -1) == ARGV[3] then
    return {'none'}  -- the same event again: a write whose answer was lost, tried again
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call(ARGV[26], ARGV[5], ARGV[3])  -- PUBLISH, or SPUBLISH on a cluster (its task's slot)
if ARGV[6] ~= '' then
    redis.call('HINCRBY', KEYS[3], ARGV[6], 1)
    redis.call('HINCRBY', KEYS[21], ARGV[6], 1)
end
if ARGV[15] == '1' then
    redis.call('ZREM', KEYS[9], task_id)
    redis.call('DEL', KEYS[10])
    redis.call('ZREM', KEYS[11], task_id)
    redis.call('HDEL', KEYS[12], task_id)
    redis.call('ZREM', KEYS[17], task_id)  -- a scheduled task cancelled: it waits no more
    redis.call('ZREM', KEYS[22], task_id)
elseif ARGV[21] ~= '' then
    redis.call('DEL', KEYS[10])
    redis.call('HDEL', KEYS[12], task_id)
    local retry_at = now + tonumber(ARGV[21])
    redis.call('ZADD', KEYS[17], retry_at, task_id)
    redis.call('ZADD', KEYS[22], retry_at, task_id)
    -- Those whose time has passed are no longer waiting (as at submit: a tenant whose only scheduled work is
    -- retries must not keep them all).
    redis.call('ZREMRANGEBYSCORE', KEYS[22], '-inf', '(' .. now)
    redis.call('EXPIRE', KEYS[22], ARGV[2])
    redis.call('ZADD', KEYS[9], retry_at + tonumber(ARGV[22]), task_id)
end
if ARGV[7] == '' then
    return {'none'}
end
redis.call('SET', KEYS[4], ARGV[7])
-- (the ack marker holds the time the ack is due: a webhook that waited in its task's line keeps waiting until then)
local push = ARGV[10] == '1' and (ARGV[12] ~= '1' or redis.call('EXISTS', KEYS[7]) == 1)
local d
if ARGV[12] == '1' then
    dst_init(now, ARGV[17])
    d = {id = ARGV[8], meta = KEYS[13], due = KEYS[14], flight = KEYS[15], deadline = KEYS[16]}
    local L = {head = KEYS[18], line = KEYS[19], ttl = tonumber(ARGV[2]), attempts = KEYS[20], stats = KEYS[3],
               skipped = ARGV[23], at = ARGV[24], now = NOW, tenant_stats = KEYS[21]}
    if not line_join(L, ARGV[25] .. ':' .. ARGV[9], d) then
        if push then
            redis.call('SET', KEYS[8], ack_due_at, 'EX', ARGV[2])
        end
        return {'lined'}
    end
end
if push then
    redis.call('SET', KEYS[8], ack_due_at, 'EX', ARGV[2])
    redis.call('ZADD', KEYS[5], ack_due_at, ARGV[9])
    return {'push', false}
end
if outside then
    dst_ensure(d, ARGV[18], ARGV[19])
    dst_owe(d, ARGV[9], NOW)
    return {'owed'}
end
local token = dst_accept(d, ARGV[9], ARGV[18], ARGV[19])
if not token then
    return {'owed'}
end
return {'webhook', redis.call('GET', KEYS[6]), token}
