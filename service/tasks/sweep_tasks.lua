-- Find the owed tasks that are overdue and push their deadline on; return those to enqueue again.
-- KEYS (SweepKeys): owed_tasks, requeues, stats
-- ARGV (SweepArgs): now, limit, first_grace_s, max_grace_s, task_prefix, lease_prefix, requeued_field
-- requeues holds each task's requeue count; now is '' for Redis's clock (see below); first_grace_s and max_grace_s
-- the first and the most grace; task_prefix and lease_prefix the task and lease key prefixes; requeued_field the
-- stats field that counts requeues.
-- A task is overdue when its message was lost (Redis crashed before it was fetched, the broker dropped a
-- retry, a fetch landed in a live worker's ack set) or its run died (the lease was not renewed). Each
-- requeue doubles the grace before the next one, so a long backlog is not enqueued again and again.
-- Runs when the store is full: its first write is this ZREM of a member that never exists, which Redis lets
-- through at maxmemory (see delivery/store_refusals.py for why this step may, and which may not).
-- Deadlines moved and counters raised: a few bytes per task, and lost work is enqueued again.
redis.call('ZREM', KEYS[1], '')
-- Deadlines are written by Redis's clock, so they are read by it: however far a worker's clock is off, it neither
-- enqueues a task early (it would run twice) nor late. (A given now is a test's.)
local now = redis_now(ARGV[1])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, task_id in ipairs(due) do
    if redis.call('EXISTS', ARGV[5] .. task_id) == 0 then
        redis.call('ZREM', KEYS[1], task_id)
        redis.call('HDEL', KEYS[2], task_id)
    else
        local ttl_ms = redis.call('PTTL', ARGV[6] .. task_id)
        if ttl_ms > 0 then
            -- a live run holds it (its renewal and this entry disagree only for a moment)
            redis.call('ZADD', KEYS[1], now + ttl_ms / 1000, task_id)
        else
            local n = redis.call('HINCRBY', KEYS[2], task_id, 1)
            local grace = math.min(tonumber(ARGV[3]) * 2 ^ (n - 1), tonumber(ARGV[4]))
            redis.call('ZADD', KEYS[1], now + grace, task_id)
            table.insert(out, task_id)
        end
    end
end
if #out > 0 then
    redis.call('HINCRBY', KEYS[3], ARGV[7], #out)
end
return out
