-- A task's webhooks, in seq order: one at a time. The webhook of a task that is owed now is its head; any newer
-- ones wait in its line, oldest first, and each is owed in turn once the one before it is settled (delivered,
-- dead-lettered, acked over WebSocket, or skipped). A progress webhook still waiting (not in flight) when a newer
-- event of its task is owed is skipped: superseded, with a 'skipped' attempt. Other webhooks are never skipped.
--
-- Entries are '<p|f>:<event id>' ('p': a progress webhook, which a newer event supersedes; 'f': any other).
-- L = {head = the task's head key, line = its line key, ttl = seconds they are kept, attempts = its attempt log,
--      stats = the counters, tenant_stats = the tenant's own, skipped = the counter of skipped webhooks,
--      at = now (RFC 3339: the time a skipped attempt shows), now = unix time (Redis's: see redis_now)}
-- A line never holds a progress entry with another entry after it: joining the line skips it first.

local function line_id(entry)
    return string.sub(entry, 3)
end

local function line_supersedable(entry)
    return string.sub(entry, 1, 1) == 'p'
end

-- Write down that a webhook will not be sent (a newer event of its task superseded it) and forget it. made: the
-- attempts made of it so far (nil: read from its record).
local function line_skip(L, event_id, d, made)
    local key = DELIVERY_PREFIX .. event_id
    if made == nil then
        made = 0
        local record = redis.call('GET', key)
        if record then
            local ok, decoded = pcall(cjson.decode, record)
            if ok and type(decoded) == 'table' and tonumber(decoded.attempts) then
                made = tonumber(decoded.attempts)
            end
        end
    end
    redis.call('DEL', key, ACK_PREFIX .. event_id)
    redis.call('ZREM', DUE_KEY, event_id)
    if d then
        redis.call('ZREM', d.due, event_id)
        redis.call('ZREM', d.deadline, event_id)
    end
    redis.call('RPUSH', L.attempts, cjson.encode({
        event_id = event_id, channel = 'webhook', attempt = made + 1, at = L.at, outcome = 'skipped',
        status_code = cjson.null, error = 'superseded by a newer event of its task', duration_ms = 0,
    }))
    redis.call('EXPIRE', L.attempts, L.ttl)
    redis.call('HINCRBY', L.stats, L.skipped, 1)
    if L.tenant_stats then
        redis.call('HINCRBY', L.tenant_stats, L.skipped, 1)
    end
end

-- The webhook event_id is settled: when it was the task's head, the next in its line is owed from now on: to the
-- destination d when the caller has it (the same for every webhook of a task), else through the general schedule,
-- which hands it over. One still waiting for a socket's ack keeps waiting until its ack time (the marker holds
-- it). Entries whose delivery is gone meanwhile (acked) are passed over.
local function line_advance(L, event_id, d)
    local head = redis.call('GET', L.head)
    if not head or line_id(head) ~= event_id then
        return
    end
    while true do
        local entry = redis.call('LPOP', L.line)
        if not entry then
            redis.call('DEL', L.head)
            return
        end
        local id = line_id(entry)
        if redis.call('EXISTS', DELIVERY_PREFIX .. id) == 1 then
            -- each head may take a whole retry span: the line's time starts again with it
            redis.call('SET', L.head, entry, 'EX', L.ttl)
            redis.call('EXPIRE', L.line, L.ttl)
            local ack_due = tonumber(redis.call('GET', ACK_PREFIX .. id) or '') or 0
            if d and ack_due <= L.now then
                redis.call('DEL', ACK_PREFIX .. id)
                dst_owe(d, id, L.now)
            else
                redis.call('ZADD', DUE_KEY, math.max(L.now, ack_due), id)
            end
            return
        end
    end
end

-- Is event_id the task's head, a progress webhook, with a newer one waiting behind it?
local function line_superseded(L, event_id)
    return redis.call('GET', L.head) == 'p:' .. event_id and redis.call('LLEN', L.line) > 0
end

-- A new webhook of the task (entry) is owed. It is the head when the task owes no other (true: the caller owes it
-- as usual), else it waits in the line (false). Progress webhooks waiting before it are superseded: those in the
-- line, and the head when it is not in flight (then entry is the head). d: the destination.
local function line_join(L, entry, d)
    local head = redis.call('GET', L.head)
    if head and redis.call('EXISTS', DELIVERY_PREFIX .. line_id(head)) == 0 then
        -- settled without a word (its record was unreadable and dropped): the line moves on
        line_advance(L, line_id(head), d)
        head = redis.call('GET', L.head)
    end
    if not head then
        redis.call('SET', L.head, entry, 'EX', L.ttl)
        return true
    end
    while true do
        local last = redis.call('LINDEX', L.line, -1)
        if not last or not line_supersedable(last) then
            break
        end
        redis.call('RPOP', L.line)
        line_skip(L, line_id(last), d, nil)
    end
    if redis.call('LLEN', L.line) == 0 and line_supersedable(head)
        and not redis.call('ZSCORE', d.flight, line_id(head)) then
        line_skip(L, line_id(head), d, nil)
        redis.call('SET', L.head, entry, 'EX', L.ttl)
        return true
    end
    redis.call('RPUSH', L.line, entry)
    redis.call('EXPIRE', L.line, L.ttl)
    redis.call('EXPIRE', L.head, L.ttl)
    return false
end
