-- Now, in unix seconds, by Redis's own clock; every step starts with this function (see delivery/scripts.py).
-- Every time a step writes (a task's owed-by time and lease, a webhook's due time, a breaker's probe time, a rate
-- bucket's) is written and later read by the clock of the Redis that holds it, so within a partition one clock
-- decides, however far apart the hosts' clocks are. given: a time that stands in for it (a test's; '' or nil for
-- Redis's). One TIME per step: a read, which a full store lets through.
local function redis_now(given)
    if given ~= nil and given ~= '' then
        return tonumber(given)
    end
    local t = redis.call('TIME')
    return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
