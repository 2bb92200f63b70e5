-- Write a task's new state and one event in one step; optionally owe its webhook.
-- KEYS: task, events, stats, delivery, due, secrets
-- ARGV: record, record_ttl_s, event, retention_s, channel, stats_field ("" for none),
--       delivery ("" for none), due_at, event_id
-- Returns the tenant's stored signing secrets (or false) when a webhook was staged, so the caller can
-- attempt it at once without another round trip.
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[3])
if ARGV[6] ~= '' then
    redis.call('HINCRBY', KEYS[3], ARGV[6], 1)
end
if ARGV[7] ~= '' then
    redis.call('SET', KEYS[4], ARGV[7])
    redis.call('ZADD', KEYS[5], ARGV[8], ARGV[9])
    return redis.call('GET', KEYS[6])
end
return false
