-- A worker that stops gives back the runs it abandoned, in one step: each is owed at once, so that the
-- next sweep (of any worker, or of this one after a restart) enqueues it again without waiting for its lease,
-- and its record shows it queued again (unless it changed since the worker read it: a cancel ended it).
-- KEYS (ReleaseKeys): owed_tasks
-- ARGV (ReleaseArgs): lease_prefix, task_prefix, now, then each of runs: task_id, run_token, the record as read
--   (or ''), the record given back (or '')
-- lease_prefix and task_prefix are the lease and task key prefixes; now is '' for Redis's clock.
-- Returns how many runs were given back (a run whose task ended or that another run holds is left alone).
-- Runs when the store is full: its first write is this ZREM of a member that never exists, which Redis lets
-- through at maxmemory (see delivery/store_refusals.py for why this step may, and which may not).
-- A stopping worker gives its runs back however full the store is.
redis.call('ZREM', KEYS[1], '')
local now = redis_now(ARGV[3])
local released = 0
for i = 4, #ARGV, 4 do
    local task_id, token, read, given_back = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
    local key = ARGV[1] .. task_id
    if redis.call('GET', key) == token then
        redis.call('DEL', key)
        if redis.call('ZSCORE', KEYS[1], task_id) then
            redis.call('ZADD', KEYS[1], now, task_id)
            released = released + 1
            local task_key = ARGV[2] .. task_id
            if read ~= '' and redis.call('GET', task_key) == read then
                redis.call('SET', task_key, given_back, 'KEEPTTL')
            end
        end
    end
end
return released
