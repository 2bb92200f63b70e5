-- Accept a task in one step: claim its Idempotency-Key, store it, owe it and enqueue its message, so that a
-- failure anywhere leaves either all of it or none (a client retrying a 503 with its key then gets a new task).
-- KEYS (SubmitKeys): task, idempotency, owed_tasks, stats, open_tasks, queue, queue_messages, tasks, tenant_tasks,
--   scheduled_tasks, tenant_stats, wake, tenant_scheduled
-- ARGV (SubmitArgs): task_id, record, record_ttl_s, answer, idempotency_ttl_s, grace_s, stats_field, max_open,
--   delay_s, task_prefix, message_id, message, created_at_ms, run_at, scheduled_field, fingerprint, admit,
--   may_exist, open_elsewhere, partition_mark
-- idempotency is the key's claim (any key when there is none); open_tasks the tenant's open tasks; queue,
-- queue_messages and wake the broker queue, its messages and its wake list (any keys when the message is not
-- enqueued here); tasks and tenant_tasks the list index of all tasks and the tenant's; tenant_stats the tenant's
-- counters. idempotency_ttl_s is '' for no key; grace_s how long after it may start the task is owed; max_open 0
-- for no cap; delay_s a scheduled task's wait from now, by Redis's clock ('' for none); task_prefix the task key
-- prefix; message_id '' when the message is not enqueued here; run_at unix s, a time the client gave ('' to run at
-- once or after delay_s: a scheduled task waits in the scheduled set until then, owed from a grace after it, so
-- that a promotion whose enqueue was lost still brings it back); scheduled_field the stats field that counts
-- scheduled submissions; fingerprint the request's (kept with the key); admit '1' to accept a new task ('' when the
-- store is full: only a key used before is answered); may_exist '1' when the task may exist already (a keyed
-- submission whose key lives in another partition: a retry of it may have stored it, see service.tasks.store);
-- open_elsewhere the tenant's open tasks in other partitions (counted by the caller just before); partition_mark
-- the two characters that name this step's partition in an id ('' on a store of one partition).
-- Returns {'new'}, {'first', answer} (the key was used before for the same request: the first answer),
-- {'conflict'} (the key was used before for another request), {'refused'} (admit is '' and the key is new) or
-- {'full', open} (the tenant already has max_open tasks that have not ended) or {'exists', record} (the task is
-- stored already: the first try of this submission stored it) or {'elsewhere'} (the key names a task of another
-- partition, out of this step's reach: nothing is written, the caller settles the key on its own).
--
-- When the store is full (Redis at maxmemory with noeviction) this step must write nothing. Redis checks memory
-- for a script only at its first write, and only when that write is one that can grow memory (deny-oom): a first
-- write that cannot (ZREMRANGEBYSCORE, EXPIRE, DEL, ZREM) lets every later write through, however full Redis is.
-- So everything before the task's SET only reads, and that SET (deny-oom) is the first write: a full Redis refuses
-- the whole step with its OOM error before any of it is written (the API answers 503). Keep it so.
-- The key's value is '<fingerprint>\n<task id>\n<first answer>' (a value that starts with '{' is a bare answer
-- kept before fingerprints were: it answers any request).
local task_id = ARGV[1]
if ARGV[5] ~= '' then
    local first = redis.call('GET', KEYS[2])
    if first then
        local fingerprint, first_id, answer = string.match(first, '^(%x+)\n([^\n]+)\n(.*)$')
        if not fingerprint then
            local ok, decoded = pcall(cjson.decode, first)
            if ok and type(decoded) == 'table' and type(decoded.id) == 'string' then
                fingerprint, first_id, answer = ARGV[16], decoded.id, first
            end
        end
        -- A key claimed for a task placed in another partition (by its webhook's destination, see
        -- service.tasks.store): whether that task still exists is not to be read from here.
        if first_id and ARGV[20] ~= '' and string.match(first_id, '^[^_]*_(..)') ~= ARGV[20] then
            return {'elsewhere'}
        end
        if first_id and redis.call('EXISTS', ARGV[10] .. first_id) == 1 then
            if fingerprint ~= ARGV[16] then
                return {'conflict'}
            end
            return {'first', answer}
        end
        -- the key's task has expired (or the value is not one this step wrote): this submission takes it over
    end
end
if ARGV[18] == '1' then
    local stored = redis.call('GET', KEYS[1])
    if stored then
        return {'exists', stored}
    end
end
if ARGV[17] ~= '1' then
    return {'refused'}
end
-- Now by Redis's clock: every time a later step compares (the owed-by time, the scheduled time, the open tasks'
-- expiry) is written by the clock that reads it, whatever the API host's clock says.
local now = redis_now(nil)
local now_ms = now * 1000
local run_at = ARGV[14]
if ARGV[9] ~= '' then
    run_at = now + tonumber(ARGV[9])
end
local max_open = tonumber(ARGV[8])
-- Entries older than a task record lives are tasks that expired without ending: not open any more (they are
-- trimmed below, after the first write).
local expired_before = now_ms - tonumber(ARGV[3]) * 1000
if max_open > 0 then
    local open = redis.call('ZCOUNT', KEYS[5], '(' .. expired_before, '+inf') + (tonumber(ARGV[19]) or 0)
    if open >= max_open then
        return {'full', open}
    end
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])  -- the first write: deny-oom (see above)
if ARGV[5] ~= '' then
    redis.call('SET', KEYS[2], ARGV[16] .. '\n' .. task_id .. '\n' .. ARGV[4], 'EX', ARGV[5])
end
redis.call('ZADD', KEYS[3], (run_at ~= '' and tonumber(run_at) or now) + tonumber(ARGV[6]), task_id)
if max_open > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', expired_before)
end
redis.call('ZADD', KEYS[5], now_ms, task_id)
redis.call('EXPIRE', KEYS[5], ARGV[3])
redis.call('HINCRBY', KEYS[4], ARGV[7], 1)
redis.call('HINCRBY', KEYS[11], ARGV[7], 1)
-- The list indexes: entries older than a record lives point at nothing any more, so they go as new ones come.
for _, index in ipairs({KEYS[8], KEYS[9]}) do
    redis.call('ZADD', index, ARGV[13], task_id)
    redis.call('ZREMRANGEBYSCORE', index, '-inf', expired_before)
end
redis.call('EXPIRE', KEYS[9], ARGV[3])
if run_at ~= '' then
    redis.call('ZADD', KEYS[10], run_at, task_id)
    redis.call('HINCRBY', KEYS[4], ARGV[15], 1)
    redis.call('HINCRBY', KEYS[11], ARGV[15], 1)
    -- The tenant's own set only counts what waits: entries whose time has passed go as new ones come.
    redis.call('ZADD', KEYS[13], run_at, task_id)
    redis.call('ZREMRANGEBYSCORE', KEYS[13], '-inf', '(' .. now)
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
