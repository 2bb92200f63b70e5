-- Write a task's record as running, if this run still holds it.
-- KEYS: task, owed tasks, lease
-- ARGV: task_id, run token, record, record_ttl_s
-- Returns 1 when written, 0 when the task has ended or another run holds it (nothing written).
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
    return 0
end
local holder = redis.call('GET', KEYS[3])
if holder and holder ~= ARGV[2] then
    return 0
end
redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[4])
return 1
