-- Ack many fetched messages at once, as Dramatiq's dispatch script acks one ('ack'): drop each id from this
-- worker's fetched set, and its body with it.
-- KEYS: the worker's fetched set, the queue's messages; ARGV: the message ids
local acked = 0
for i = 1, #ARGV do
    if redis.call("srem", KEYS[1], ARGV[i]) > 0 then
        redis.call("hdel", KEYS[2], ARGV[i])
        acked = acked + 1
    end
end
return acked
