-- Renew the leases of the runs a worker holds, in one step.
-- KEYS (RenewKeys): owed_tasks
-- ARGV (RenewArgs): lease_prefix, lease_ms, then each of runs: task_id, run_token
-- lease_prefix is the lease key prefix.
-- Each renewed task is owed again from its lease's end, by Redis's clock (as its lease expires).
-- Returns the task ids whose lease is lost: the task has ended, or another run holds it.
-- A lease that merely expired (Redis stalled longer than the lease) is taken back if nobody took it.
-- Runs when the store is full: its first write is this ZREM of a member that never exists, which Redis lets
-- through at maxmemory (see delivery/store_refusals.py for why this step may, and which may not).
-- Else a run waiting for memory to write its end would lose its lease, and its task would run twice.
redis.call('ZREM', KEYS[1], '')
local now = redis_now(nil)
local owed_until = now + tonumber(ARGV[2]) / 1000
local lost = {}
for i = 3, #ARGV, 2 do
    local task_id, token = ARGV[i], ARGV[i + 1]
    local key = ARGV[1] .. task_id
    local holder = redis.call('GET', key)
    if (holder == token or not holder) and redis.call('ZSCORE', KEYS[1], task_id) then
        redis.call('SET', key, token, 'PX', ARGV[2])
        redis.call('ZADD', KEYS[1], owed_until, task_id)
    else
        table.insert(lost, task_id)
    end
end
return lost
