-- Owe dead letters' events again, on a fresh schedule, in one step per batch.
-- KEYS: due, stats
-- ARGV: now, delivery key prefix, replayed_field, then event_id, delivery, event_id, delivery, ...
-- An event whose delivery is already owed (a replay in flight) is left alone.
-- Returns one 1 (replayed) or 0 (already in flight) per event, in order.
local out = {}
local replayed = 0
for i = 4, #ARGV, 2 do
    local event_id = ARGV[i]
    if redis.call('SET', ARGV[2] .. event_id, ARGV[i + 1], 'NX') then
        redis.call('ZADD', KEYS[1], ARGV[1], event_id)
        replayed = replayed + 1
        table.insert(out, 1)
    else
        table.insert(out, 0)
    end
end
if replayed > 0 then
    redis.call('HINCRBY', KEYS[2], ARGV[3], replayed)
end
return out
