-- A worker that stops gives back the runs it abandoned, in one step: each is owed at once, so that the
-- next sweep (of any worker, or of this one after a restart) enqueues it again without waiting for its lease.
-- KEYS[1]: owed tasks
-- ARGV: lease key prefix, now, then task_id, run token, task_id, run token, ...
-- Returns how many runs were given back (a run whose task ended or that another run holds is left alone).
-- Runs when the store is full: its first write is this ZREM of a member that never exists, which Redis lets
-- through at maxmemory (see delivery/store_refusals.py for why this step may, and which may not).
-- A stopping worker gives its runs back however full the store is.
redis.call('ZREM', KEYS[1], '')
local released = 0
for i = 3, #ARGV, 2 do
    local task_id, token = ARGV[i], ARGV[i + 1]
    local key = ARGV[1] .. task_id
    if redis.call('GET', key) == token then
        redis.call('DEL', key)
        if redis.call('ZSCORE', KEYS[1], task_id) then
            redis.call('ZADD', KEYS[1], ARGV[2], task_id)
            released = released + 1
        end
    end
end
return released
