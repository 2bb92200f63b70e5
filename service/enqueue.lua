-- Enqueue run_task messages as the Redis broker's own enqueue does (dramatiq's dispatch.lua, command 'enqueue'),
-- many in one step, and wake an idle worker.
-- KEYS (EnqueueKeys): queue, queue_messages, wake
-- ARGV (EnqueueArgs): then each of messages: message_id, message
-- queue, queue_messages and wake are the broker queue, its messages and its wake list.
-- Runs when the store is full (the sweeper's and the scheduler's enqueues of accepted work): its first write is
-- this HDEL of a field that never exists, which Redis lets through at maxmemory (see delivery/store_refusals.py).
-- A transaction could not: Redis refuses every command queued in MULTI at maxmemory.
redis.call('HDEL', KEYS[2], '')
for i = 1, #ARGV, 2 do
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    redis.call('RPUSH', KEYS[1], ARGV[i])
end
-- One token at most; a speed-up only: pcall, so that a wake key gone wrong never fails the enqueue.
if redis.pcall('LLEN', KEYS[3]) == 0 then
    redis.pcall('RPUSH', KEYS[3], '1')
end
return #ARGV / 2
