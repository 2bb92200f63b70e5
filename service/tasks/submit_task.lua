-- Accept a task in one step: claim its Idempotency-Key, store it, owe it and enqueue its message, so that a
-- failure anywhere leaves either all of it or none (a client retrying a 503 with its key then gets a new task).
-- KEYS: task, idempotency (any key when there is none), owed tasks, stats, open tasks of the tenant,
--       broker queue, broker queue messages (any keys when the message is not enqueued here),
--       the list index of all tasks, the tenant's list index, scheduled tasks, the tenant's counters,
--       the broker queue's wake list (any key when the message is not enqueued here), the tenant's scheduled tasks
-- ARGV: task_id, record, record_ttl_s, answer, idempotency_ttl_s ('' for no key), owed_until, stats_field,
--       max_open (0: no cap), now_ms, task key prefix, message_id ('' when not enqueued here), message,
--       created_at_ms, run_at ('' to run at once: a scheduled task waits in the scheduled set until then, owed
--       from a grace after it, so that a promotion whose enqueue was lost still brings it back), the stats field
--       that counts scheduled submissions
-- Returns {'new'}, {'first', answer} (the key was used before: the first answer) or {'full', open} (the
-- tenant already has max_open tasks that have not ended).
local task_id = ARGV[1]
if ARGV[5] ~= '' then
    local first = redis.call('GET', KEYS[2])
    if first then
        local ok, answer = pcall(cjson.decode, first)
        if ok and type(answer) == 'table' and type(answer.id) == 'string'
            and redis.call('EXISTS', ARGV[10] .. answer.id) == 1 then
            return {'first', first}
        end
        -- the key's task has expired (or the value predates kept answers): this submission takes it over
    end
end
local now_ms = tonumber(ARGV[9])
local max_open = tonumber(ARGV[8])
if max_open > 0 then
    -- Entries older than a task record lives are tasks that expired without ending: not open any more.
    redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now_ms - tonumber(ARGV[3]) * 1000)
    local open = redis.call('ZCARD', KEYS[5])
    if open >= max_open then
        return {'full', open}
    end
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
if ARGV[5] ~= '' then
    redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[5])
end
redis.call('ZADD', KEYS[3], ARGV[6], task_id)
redis.call('ZADD', KEYS[5], now_ms, task_id)
redis.call('EXPIRE', KEYS[5], ARGV[3])
redis.call('HINCRBY', KEYS[4], ARGV[7], 1)
redis.call('HINCRBY', KEYS[11], ARGV[7], 1)
-- The list indexes: entries older than a record lives point at nothing any more, so they go as new ones come.
local expired_before = now_ms - tonumber(ARGV[3]) * 1000
for _, index in ipairs({KEYS[8], KEYS[9]}) do
    redis.call('ZADD', index, ARGV[13], task_id)
    redis.call('ZREMRANGEBYSCORE', index, '-inf', expired_before)
end
redis.call('EXPIRE', KEYS[9], ARGV[3])
if ARGV[14] ~= '' then
    redis.call('ZADD', KEYS[10], ARGV[14], task_id)
    redis.call('HINCRBY', KEYS[4], ARGV[15], 1)
    redis.call('HINCRBY', KEYS[11], ARGV[15], 1)
    -- The tenant's own set only counts what waits: entries whose time has passed go as new ones come.
    redis.call('ZADD', KEYS[13], ARGV[14], task_id)
    redis.call('ZREMRANGEBYSCORE', KEYS[13], '-inf', '(' .. (now_ms / 1000))
    redis.call('EXPIRE', KEYS[13], ARGV[3])
end
if ARGV[11] ~= '' then
    -- What the Redis broker's own enqueue does (dramatiq's dispatch.lua, command 'enqueue').
    redis.call('HSET', KEYS[7], ARGV[11], ARGV[12])
    redis.call('RPUSH', KEYS[6], ARGV[11])
    -- An idle worker waits on the wake list (at most one token in it): it fetches this message at once. A
    -- speed-up only: pcall, so that a wake key gone wrong can never fail (or half-write) a submission.
    if redis.pcall('LLEN', KEYS[12]) == 0 then
        redis.pcall('RPUSH', KEYS[12], '1')
    end
end
return {'new'}
