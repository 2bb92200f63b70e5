-- Flow control of one destination (a tenant plus a callback URL's origin): the functions every script that
-- touches a destination shares. Python prepends the key names (READY, ALL, TENANT_PREFIX, DST_HEAD and DST_TAIL,
-- those of the partition of the script's first key: see delivery.destinations.lua) and each
-- script calls dst_init with the clock and the settings (the two of FlowSettings.header) before anything else.
--
-- A destination's keys share its partition's hash tag (on a standalone store of one partition, {dst_...}):
--   meta      hash: tenant, origin, created_at, caps (max_in_flight, rate_per_s; absent: the defaults),
--             breaker (failures, opened_at, next_probe_at, probe_wait, probe), hold_until (Retry-After), paused,
--             the rate bucket (tokens, tokens_at), last_success_at, last_failure_at, last_error
--   due       sorted set: event id -> unix time its next attempt is due (every owed webhook not in flight)
--   flight    sorted set: event id -> unix ms its attempt's lease ends (the attempts in flight, cluster-wide)
--   deadline  sorted set: event id -> unix time its retry span ends (dead-lettered then if still held)
--   untried   sorted set: event id -> unix time it was owed, for replays not attempted yet (see dst_untried)
-- READY holds every destination that has something to do, by the time it next does: the claim reads only the
-- destinations that are due, never the webhooks an open or paused destination holds.

local NOW, NOW_MS, DEFAULT_MAX, THRESHOLD, PROBE_S, IDLE_TTL, LEASE_MS, SPAN_S
local MAX_PROBE_S = 300

-- now: unix time ('' for Redis's clock: see redis_now); settings: "max_in_flight threshold probe_s idle_ttl_s
-- lease_s retry_span_s" (one string, so that a script call carries two arguments for them, not seven).
local function dst_init(now, settings)
    local default_max, threshold, probe_s, idle_ttl, lease_s, span_s =
        string.match(settings, '^(%S+) (%S+) (%S+) (%S+) (%S+) (%S+)$')
    NOW = redis_now(now)
    NOW_MS = math.floor(NOW * 1000)
    DEFAULT_MAX = tonumber(default_max)
    THRESHOLD = tonumber(threshold)
    PROBE_S = tonumber(probe_s)
    IDLE_TTL = tonumber(idle_ttl)
    LEASE_MS = math.floor((NOW + tonumber(lease_s)) * 1000)
    SPAN_S = tonumber(span_s)
end

local function dst_keys(id)
    local tag = DST_HEAD .. id .. DST_TAIL
    return {id = id, meta = tag .. 'meta', due = tag .. 'due', flight = tag .. 'flight', deadline = tag .. 'deadline'}
end

-- Replayed webhooks owed without a real attempt yet. A replay asks for a real attempt, so one is never expired
-- before it had one: it has no deadline until its first attempt (its retry span starts then), and an open
-- destination sends it as its next probe, before the webhooks held longest. (Named after the meta key, so that it
-- shares the destination's hash tag.)
local function dst_untried(d)
    return string.sub(d.meta, 1, #d.meta - 4) .. 'untried'
end

local function num(value, default)
    if value then
        return tonumber(value)
    end
    return default
end

-- Make the destination's record on its first owed webhook (a forgotten one is made again, indexes included).
local function dst_ensure(d, tenant, origin)
    if redis.call('HSETNX', d.meta, 'tenant', tenant) == 1 then
        redis.call('HSET', d.meta, 'origin', origin, 'created_at', NOW, 'failures', 0)
        redis.call('SADD', ALL, d.id)
        redis.call('SADD', TENANT_PREFIX .. tenant, d.id)
    end
end

-- Is event_id owed to the destination already (waiting or in flight)?
local function dst_owes(d, event_id)
    return redis.call('ZSCORE', d.due, event_id) or redis.call('ZSCORE', d.flight, event_id)
end

local function dst_read(d)
    local v = redis.call('HMGET', d.meta, 'max_in_flight', 'rate_per_s', 'opened_at', 'next_probe_at', 'probe',
        'hold_until', 'paused', 'tokens', 'tokens_at', 'failures', 'probe_wait')
    local probe = v[5]
    if probe and not redis.call('ZSCORE', d.flight, probe) then
        -- its attempt left flight without a settle (its record was gone or unreadable): no probe is out
        redis.call('HDEL', d.meta, 'probe')
        probe = false
    end
    return {
        max = num(v[1], DEFAULT_MAX), custom = (v[1] or v[2]) and true or false, rate = num(v[2], nil),
        opened = v[3], next_probe = num(v[4], 0), probe = probe, hold = num(v[6], 0), paused = v[7] == '1',
        tokens = v[8], tokens_at = v[9], failures = num(v[10], 0), probe_wait = num(v[11], PROBE_S),
    }
end

-- The first webhooks by retry deadline that are waiting, not in flight: at most limit of them. The deadline set
-- also holds the attempts in flight, so this reads past at most as many of those as there are.
local function dst_waiting_by_deadline(d, limit)
    local found = {}
    local window = redis.call('ZCARD', d.flight) + limit
    local ranked = redis.call('ZRANGE', d.deadline, 0, window - 1, 'WITHSCORES')
    for i = 1, #ranked, 2 do
        if #found >= limit then
            break
        end
        if redis.call('ZSCORE', d.due, ranked[i]) then
            table.insert(found, {ranked[i], tonumber(ranked[i + 1])})
        elseif not redis.call('ZSCORE', d.flight, ranked[i]) then
            redis.call('ZREM', d.deadline, ranked[i])  -- owed no more (its record was unreadable): not a place holder
        end
    end
    return found
end

-- Tokens in the rate bucket now (its burst is one second of the rate, at least one).
local function dst_tokens(s)
    if not s.rate then
        return math.huge
    end
    local burst = math.max(1, s.rate)
    local tokens = num(s.tokens, burst)
    local at = num(s.tokens_at, NOW)
    return math.min(burst, tokens + math.max(0, NOW - at) * s.rate)
end

local function dst_take(d, s, n)
    if s.rate and n > 0 then
        redis.call('HSET', d.meta, 'tokens', dst_tokens(s) - n, 'tokens_at', NOW)
    end
end

-- Put the destination in READY at the time it next has something to do (or take it out), after any change.
local function dst_refresh(d)
    local s = dst_read(d)
    local next_at = nil
    local function consider(t)
        if next_at == nil or t < next_at then
            next_at = t
        end
    end
    local in_flight = redis.call('ZCARD', d.flight)
    if in_flight > 0 then
        -- the soonest lease to run out: a worker that died holding it gives the slot back then
        consider(tonumber(redis.call('ZRANGE', d.flight, 0, 0, 'WITHSCORES')[2]) / 1000)
    end
    local head = redis.call('ZRANGE', d.due, 0, 0, 'WITHSCORES')
    if #head > 0 and not s.paused then
        if s.opened then
            if not s.probe then
                consider(math.max(s.next_probe, s.hold))
            end
            local expiring = dst_waiting_by_deadline(d, 1)
            if #expiring > 0 then
                consider(expiring[1][2])
            end
        elseif in_flight < s.max then
            local t = math.max(tonumber(head[2]), s.hold)
            if s.rate then
                local tokens = dst_tokens(s)
                if tokens < 1 then
                    t = math.max(t, NOW + (1 - tokens) / s.rate)
                end
            end
            consider(t)
        end
        -- at its cap the next settle refreshes it
    end
    if next_at == nil then
        redis.call('ZREM', READY, d.id)
    else
        redis.call('ZADD', READY, next_at, d.id)
    end
    -- An idle destination with nothing of its own set is forgotten after a while; one that owes or was set is kept.
    if in_flight == 0 and #head == 0 and not s.paused and not s.custom then
        redis.call('EXPIRE', d.meta, IDLE_TTL)
    else
        redis.call('PERSIST', d.meta)
    end
end

-- The destination may have something to do at time t: lower its READY score to t if it is later (the claim's
-- refresh sets the exact time, raising it too). A READY score is a lower bound: too early costs one visit of the
-- claim, too late would hold webhooks, so every change that makes work possible sooner lowers it.
local function dst_mark_ready(d, t)
    redis.call('ZADD', READY, 'LT', t, d.id)
    redis.call('PERSIST', d.meta)
end

-- A webhook is owed to the destination, due at due_at. Its retry span starts when it first waits (owed while the
-- destination is busy, or after its first failed attempt): held past that by an open destination, it is
-- dead-lettered without more attempts.
local function dst_owe(d, event_id, due_at)
    redis.call('ZADD', d.due, due_at, event_id)
    redis.call('ZADD', d.deadline, 'NX', NOW + SPAN_S, event_id)
    dst_mark_ready(d, due_at)
end

-- Is a webhook of the destination due now (waiting for a slot, a token or the end of a hold)?
local function dst_due_now(d)
    return #redis.call('ZRANGEBYSCORE', d.due, '-inf', NOW, 'LIMIT', 0, 1) > 0
end

-- Lease one attempt of event_id to the caller now, when the destination lets one start now and no webhook due
-- before it waits (a retry due later does not count). Returns the lease token (unix ms) or false.
local function dst_admit(d, event_id)
    local s = dst_read(d)
    if s.paused or s.opened or s.hold > NOW or dst_due_now(d) then
        return false
    end
    if redis.call('ZCARD', d.flight) >= s.max or dst_tokens(s) < 1 then
        return false
    end
    redis.call('ZADD', d.flight, LEASE_MS, event_id)
    dst_take(d, s, 1)
    dst_mark_ready(d, LEASE_MS / 1000)  -- when a worker that died holding it gives the slot back
    return LEASE_MS
end

-- A webhook becomes owed to the destination now: leased to the caller at once when it may start (the lease
-- token), else waiting with the rest (false).
local function dst_accept(d, event_id, tenant, origin)
    dst_ensure(d, tenant, origin)
    local token = dst_admit(d, event_id)
    if not token then
        dst_owe(d, event_id, NOW)
    end
    return token
end

-- A replay owed to the destination now, not attempted yet: leased to the caller at once when the destination lets
-- it start now (the lease token), else waiting, first in line for a probe and with no deadline (false).
local function dst_accept_replay(d, event_id, tenant, origin)
    dst_ensure(d, tenant, origin)
    local token = dst_admit(d, event_id)
    if not token then
        redis.call('ZADD', d.due, NOW, event_id)
        redis.call('ZADD', dst_untried(d), 'NX', NOW, event_id)
        dst_mark_ready(d, NOW)
    end
    return token
end

-- The webhook an open destination probes with: a replay not attempted yet (oldest first), else the webhook
-- waiting longest, not in flight (the deadline set is in the order they first waited; the due set, by next
-- attempt, answers for any without a deadline).
local function dst_oldest(d)
    local untried = dst_untried(d)
    -- (one more than there are attempts in flight: past those, the first one waiting)
    for _, id in ipairs(redis.call('ZRANGE', untried, 0, redis.call('ZCARD', d.flight))) do
        if redis.call('ZSCORE', d.due, id) then
            return id
        end
        if not redis.call('ZSCORE', d.flight, id) then
            redis.call('ZREM', untried, id)  -- owed no more
        end
    end
    local first = dst_waiting_by_deadline(d, 1)
    if #first > 0 then
        return first[1][1]
    end
    local head = redis.call('ZRANGE', d.due, 0, 0)
    return head[1] or false
end

-- Lease up to budget attempts of a ready destination into out (as {event id, 'send'|'probe'|'expire'}):
-- expired leases come back first; then an open destination gives its probe and the held webhooks whose retry
-- span has ended (to be dead-lettered, not sent), a closed one its due webhooks within its caps, oldest first.
local function dst_claim(d, budget, out)
    local s = dst_read(d)
    local stale = redis.call('ZRANGEBYSCORE', d.flight, '-inf', NOW_MS, 'WITHSCORES')
    for i = 1, #stale, 2 do
        local id = stale[i]
        redis.call('ZREM', d.flight, id)
        -- back in its place: due when its lost attempt was leased
        redis.call('ZADD', d.due, (tonumber(stale[i + 1]) - (LEASE_MS - NOW_MS)) / 1000, id)
        if s.probe == id then
            redis.call('HDEL', d.meta, 'probe')
            s.probe = false
        end
    end
    local taken = 0
    if not s.paused then
        if s.opened then
            -- (the deadline entry stays until the dead letter is written: a lost 'expire' lease expires again)
            for _, entry in ipairs(dst_waiting_by_deadline(d, budget)) do
                if entry[2] > NOW then
                    break
                end
                redis.call('ZREM', d.due, entry[1])
                redis.call('ZADD', d.flight, LEASE_MS, entry[1])
                table.insert(out, {entry[1], 'expire'})
                taken = taken + 1
            end
            if not s.probe and NOW >= math.max(s.next_probe, s.hold) and taken < budget then
                local probe = dst_oldest(d)
                if probe then
                    redis.call('ZREM', d.due, probe)
                    redis.call('ZADD', d.flight, LEASE_MS, probe)
                    redis.call('HSET', d.meta, 'probe', probe)
                    table.insert(out, {probe, 'probe'})
                    taken = taken + 1
                end
            end
        elseif s.hold <= NOW then
            local room = math.min(s.max - redis.call('ZCARD', d.flight), budget)
            if s.rate then
                room = math.min(room, math.floor(dst_tokens(s)))
            end
            if room > 0 then
                local ids = redis.call('ZRANGEBYSCORE', d.due, '-inf', NOW, 'LIMIT', 0, room)
                for _, id in ipairs(ids) do
                    redis.call('ZREM', d.due, id)
                    redis.call('ZADD', d.flight, LEASE_MS, id)
                    table.insert(out, {id, 'send'})
                end
                dst_take(d, s, #ids)
                taken = taken + #ids
            end
        end
    end
    dst_refresh(d)
    return taken
end

-- Lease the destination's next due webhook to the caller when it may start now (closed, not paused or held, a
-- slot and a token free): its id, record and lease token, or nil. A record that is gone is dropped.
local function dst_next(d, record_prefix)
    local s = nil
    while true do
        local head = redis.call('ZRANGEBYSCORE', d.due, '-inf', NOW, 'LIMIT', 0, 1)
        if #head == 0 then
            return nil
        end
        s = s or dst_read(d)
        if s.paused or s.opened or s.hold > NOW or redis.call('ZCARD', d.flight) >= s.max or dst_tokens(s) < 1 then
            return nil
        end
        local id = head[1]
        redis.call('ZREM', d.due, id)
        local record = redis.call('GET', record_prefix .. id)
        if record then
            redis.call('ZADD', d.flight, LEASE_MS, id)
            dst_take(d, s, 1)
            return id, record, LEASE_MS
        end
        redis.call('ZREM', d.deadline, id)
        redis.call('ZREM', dst_untried(d), id)
    end
end

-- Does the caller still hold event_id's attempt? true, false (another attempt holds it now), or nil (no lease:
-- it ran out and nobody took it again yet, so the caller's outcome still counts).
local function dst_holds(d, event_id, token)
    local score = redis.call('ZSCORE', d.flight, event_id)
    if not score then
        return nil
    end
    return token ~= '' and tonumber(score) == tonumber(token)
end

local function dst_close(d)
    redis.call('HDEL', d.meta, 'opened_at', 'next_probe_at', 'probe_wait', 'probe')
end

-- After an attempt: give its slot back and move the breaker. outcome is 'ok', 'fail' (no answer, timeout, 5xx,
-- 429: what the breaker counts), 'other' (the receiver answered otherwise: a 4xx, which resets the count) or
-- 'none' (no attempt was made).
-- Returns 'opened', 'recovered' or ''.
local function dst_settle(d, event_id, outcome, error_text, hold_until)
    local s = dst_read(d)
    local was_probe = s.probe == event_id
    redis.call('ZREM', d.flight, event_id)
    redis.call('ZREM', d.due, event_id)
    redis.call('ZREM', dst_untried(d), event_id)  -- attempted (or settled without one): a webhook like the others
    local change = ''
    if was_probe then
        redis.call('HDEL', d.meta, 'probe')
    end
    if outcome == 'ok' then
        redis.call('HSET', d.meta, 'failures', 0, 'last_success_at', NOW)
        if s.opened then
            dst_close(d)
            change = 'recovered'
        end
    elseif outcome == 'other' then
        -- The receiver answered (a 4xx): it is up, whatever it thought of this webhook. The breaker counts only
        -- what says it is down; an answered probe closes the circuit.
        redis.call('HSET', d.meta, 'last_failure_at', NOW, 'last_error', error_text, 'failures', 0)
        if s.opened and was_probe then
            dst_close(d)
            change = 'recovered'
        end
    elseif outcome ~= 'none' then
        redis.call('HSET', d.meta, 'last_failure_at', NOW, 'last_error', error_text)
        redis.call('HINCRBY', d.meta, 'failures', 1)
        if s.opened then
            if was_probe then
                local wait = math.min(s.probe_wait * 2, MAX_PROBE_S)
                redis.call('HSET', d.meta, 'probe_wait', wait, 'next_probe_at', NOW + wait)
            end
        elseif s.failures + 1 >= THRESHOLD then
            redis.call('HSET', d.meta, 'opened_at', NOW, 'probe_wait', PROBE_S, 'next_probe_at', NOW + PROBE_S)
            change = 'opened'
        end
    end
    if hold_until ~= '' and tonumber(hold_until) > math.max(s.hold, NOW) then
        redis.call('HSET', d.meta, 'hold_until', hold_until)
        if s.opened or change == 'opened' then
            local next_probe = num(redis.call('HGET', d.meta, 'next_probe_at'), 0)
            redis.call('HSET', d.meta, 'next_probe_at', math.max(next_probe, tonumber(hold_until)))
        end
    end
    return change
end
