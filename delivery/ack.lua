-- A socket acked an event in time: settle its delivery, so no webhook is sent.
-- KEYS (AckKeys): ack_marker, due, delivery, attempts, stats, latency, webhook_head, webhook_line, tenant_stats
-- ARGV (AckArgs): event_id, attempts_ttl_s, acked, skipped, latency_bucket, latency_s, acked_counter,
--   skipped_counter
-- acked is the acked attempt, skipped the skipped webhook attempt ('' when the task has no webhook); the counters
-- are the stats fields to raise
-- The task's next webhook, if one waited behind this one, is owed from then on (task_line.lua).
-- Returns 1 when this ack settled the delivery, 0 when it was not waiting for one (already acked, timed out,
-- or a progress event).
-- Its first write (DEL) runs when the store is full: an ack settles a delivery and frees it (delivery/store_refusals.py).
if redis.call('DEL', KEYS[1]) == 0 then
    return 0
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3])
redis.call('RPUSH', KEYS[4], ARGV[3])
redis.call('HINCRBY', KEYS[5], ARGV[7], 1)
redis.call('HINCRBY', KEYS[9], ARGV[7], 1)
if ARGV[4] ~= '' then
    redis.call('RPUSH', KEYS[4], ARGV[4])
    redis.call('HINCRBY', KEYS[5], ARGV[8], 1)
    redis.call('HINCRBY', KEYS[9], ARGV[8], 1)
end
redis.call('EXPIRE', KEYS[4], ARGV[2])
redis.call('HINCRBY', KEYS[6], ARGV[5], 1)
redis.call('HINCRBYFLOAT', KEYS[6], 'sum', ARGV[6])
redis.call('HINCRBY', KEYS[9], 'latency:' .. ARGV[5], 1)
line_advance({head = KEYS[7], line = KEYS[8], ttl = tonumber(ARGV[2]), now = redis_now(nil)}, ARGV[1], nil)
return 1
