-- Ack many fetched messages at once, as Dramatiq's dispatch script acks one ('ack'): drop each id from this
-- worker's fetched set, and its body with it.
-- KEYS (AckKeys): fetched, queue_messages
-- ARGV (AckArgs): then each of message_ids: a fetched message's id
-- fetched is the worker's fetched set; queue_messages the queue's messages.
local acked = 0
for i = 1, #ARGV do
    if redis.call("srem", KEYS[1], ARGV[i]) > 0 then
        redis.call("hdel", KEYS[2], ARGV[i])
        acked = acked + 1
    end
end
return acked
