-- A worker is about to run a task: take its lease unless the task has ended or a live run holds it.
-- KEYS (StartKeys): task, lease, owed_tasks
-- ARGV (StartArgs): task_id, run_token, lease_ms
-- lease_ms is how long the lease lasts: the task is owed again from the lease's end, by Redis's clock.
-- Returns {'run', record}, {'gone'} (no record: expired or never stored), {'ended'} or {'leased'}.
-- Runs when the store is full: its first write is this ZREM of a member that never exists, which Redis lets
-- through at maxmemory (see delivery/store_refusals.py for why this step may, and which may not).
-- A lease and a score: a few bytes, and the run's end waits for memory with its lease kept.
redis.call('ZREM', KEYS[3], '')
local record = redis.call('GET', KEYS[1])
if not record then
    redis.call('ZREM', KEYS[3], ARGV[1])
    return {'gone'}
end
if not redis.call('ZSCORE', KEYS[3], ARGV[1]) then
    return {'ended'}
end
if redis.call('EXISTS', KEYS[2]) == 1 then
    return {'leased'}
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
local now = redis_now(nil)
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]) / 1000, ARGV[1])
return {'run', record}
