-- Scheduled tasks whose time has come, in one step: each leaves the scheduled set and is owed from now on (a
-- grace to start, as a new submission), and is returned to be enqueued. A task that has ended meanwhile (a
-- cancel) is only forgotten.
-- KEYS (PromoteKeys): scheduled_tasks, owed_tasks
-- ARGV (PromoteArgs): now, limit, grace_s
-- now is '' for Redis's clock, which wrote the scheduled times; a promoted task is owed grace_s after now.
-- Runs when the store is full: its first write is this ZREM of a member that never exists, which Redis lets
-- through at maxmemory (see delivery/store_refusals.py for why this step may, and which may not).
-- An entry moves from one set to the other: accepted work starts when its time comes.
redis.call('ZREM', KEYS[1], '')
local now = redis_now(ARGV[1])
local owed_until = now + tonumber(ARGV[3])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, task_id in ipairs(due) do
    redis.call('ZREM', KEYS[1], task_id)
    if redis.call('ZSCORE', KEYS[2], task_id) then
        redis.call('ZADD', KEYS[2], owed_until, task_id)
        table.insert(out, task_id)
    end
end
return out
