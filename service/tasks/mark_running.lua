-- Write a task's record as running, if this run still holds it.
-- KEYS (RunningKeys): task, owed_tasks, lease
-- ARGV (RunningArgs): task_id, run_token, record, record_ttl_s
-- Returns 1 when written, 0 when the task has ended or another run holds it (nothing written).
-- Runs when the store is full: its first write is this ZREM of a member that never exists, which Redis lets
-- through at maxmemory (see delivery/store_refusals.py for why this step may, and which may not).
-- The record written again with its status and start time: about the size it was.
redis.call('ZREM', KEYS[2], '')
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
    return 0
end
local holder = redis.call('GET', KEYS[3])
if holder and holder ~= ARGV[2] then
    return 0
end
redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[4])
return 1
