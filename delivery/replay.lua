-- Owe dead letters' events again, on a fresh schedule, in one step per batch.
-- KEYS (ReplayKeys): due, stats, then each of steps: the delivery steps list of an event's task, in the order of
--   the events
-- ARGV (ReplayArgs): now, delivery_prefix, replayed_counter, steps_ttl_s, then each of events: event_id, delivery,
--   replayed step
-- now is '' for Redis's clock, by which the schedule is read
-- An event whose delivery is already owed (a replay in flight) is left alone; one replayed gets its 'replayed' step
-- in its task's steps (beside the attempts, kept as long).
-- Returns one 1 (replayed) or 0 (already in flight) per event, in order.
local now = redis_now(ARGV[1])
local out = {}
local replayed = 0
local n = 0
for i = 5, #ARGV, 3 do
    n = n + 1
    local event_id = ARGV[i]
    if redis.call('SET', ARGV[2] .. event_id, ARGV[i + 1], 'NX') then
        redis.call('ZADD', KEYS[1], now, event_id)
        redis.call('RPUSH', KEYS[2 + n], ARGV[i + 2])
        redis.call('EXPIRE', KEYS[2 + n], ARGV[4])
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
