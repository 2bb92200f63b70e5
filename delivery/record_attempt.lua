-- Record one webhook attempt and what follows it, in one step.
-- KEYS: attempts, stats, due, delivery, latency, dead_letter, dead_letters, dead_letters_of_tenant,
--       dead_letter_of_event
-- ARGV: attempt, attempts_ttl_s, outcome_field, verdict ('delivered' | 'retry' | 'dead' | 'dropped' | 'noted'),
--       event_id,
--       then by verdict:
--         retry:     delivery, due_at
--         delivered: latency_bucket, latency_s, replayed dead letter id ('' for none)
--         dead:      dead letter, dead letter id, dead_at_ms, dead_lettered_field (the stats counter),
--                    retention_s (how long dead letters are kept)
--         noted:     nothing (the attempt is only written down; the delivery goes on)
--         dropped:   nothing (a WebSocket-only event nobody acked: it stays in the log for resume and polling)
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
local verdict = ARGV[4]
local event_id = ARGV[5]
if verdict == 'noted' then
    return 1
end
if verdict == 'retry' then
    redis.call('SET', KEYS[4], ARGV[6])
    redis.call('ZADD', KEYS[3], ARGV[7], event_id)
    return 1
end
redis.call('ZREM', KEYS[3], event_id)
redis.call('DEL', KEYS[4])
if verdict == 'dropped' then
    return 1
end
if verdict == 'delivered' then
    redis.call('HINCRBY', KEYS[5], ARGV[6], 1)
    redis.call('HINCRBYFLOAT', KEYS[5], 'sum', ARGV[7])
    local replayed = ARGV[8]
    if replayed ~= '' then
        redis.call('DEL', KEYS[6])
        redis.call('ZREM', KEYS[7], replayed)
        redis.call('ZREM', KEYS[8], replayed)
        redis.call('DEL', KEYS[9])
    end
    return 1
end
-- dead: kept retention_s. The tenant's index drops entries older than that as new ones come (workers trim the
-- global index once a minute: they know no tenants)
local retention_s = tonumber(ARGV[10])
local cutoff_ms = tonumber(ARGV[8]) - retention_s * 1000
redis.call('SET', KEYS[6], ARGV[6], 'EX', retention_s)
redis.call('ZADD', KEYS[7], ARGV[8], ARGV[7])
redis.call('ZADD', KEYS[8], ARGV[8], ARGV[7])
redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', cutoff_ms)
redis.call('EXPIRE', KEYS[8], retention_s)
redis.call('SET', KEYS[9], ARGV[7], 'EX', retention_s)
redis.call('HINCRBY', KEYS[2], ARGV[9], 1)
return 1
