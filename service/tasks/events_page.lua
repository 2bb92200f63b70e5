-- One page of a task's event log, bounded in count and in bytes, so that a page of large events never sends
-- (or holds in this script) much more than it answers with.
-- KEYS (PageKeys): events
-- ARGV (PageArgs): start, limit, max_bytes
-- events is the task's event log; start the index to start from, limit the most events, max_bytes the most bytes
-- (the first event is returned whatever its size).
-- Returns {more, events}: more is 1 when an event follows the last one returned, else 0.
local start, count, max_bytes = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local chunk = 16
local out, spent = {}, 0
while true do
    local items = redis.call('LRANGE', KEYS[1], start, start + chunk - 1)
    for _, item in ipairs(items) do
        if #out == count or (#out > 0 and spent + #item > max_bytes) then
            return {1, out}
        end
        out[#out + 1] = item
        spent = spent + #item
    end
    if #items < chunk then
        return {0, out}
    end
    start = start + chunk
end
