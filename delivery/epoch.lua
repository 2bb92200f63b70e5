-- Read the store's epoch, writing it when the store has none.
-- KEYS (EpochKeys): epoch
-- ARGV (EpochArgs): new_id, now, known
-- epoch is a hash: id, created_at, and lost_at while a loss is not acknowledged; now is unix s; known is the id the
-- caller knew ('' when it knew none yet)
-- Returns {id, lost_at or false}.
-- A caller that knew an id and finds another (or none) has seen the store lose its data: lost_at is set then, so
-- that every process, and those started later, say so until an operator acknowledges it.
local id = redis.call('HGET', KEYS[1], 'id')
if not id then
    id = ARGV[1]
    redis.call('HSET', KEYS[1], 'id', id, 'created_at', ARGV[2])
end
if ARGV[3] ~= '' and id ~= ARGV[3] and redis.call('HEXISTS', KEYS[1], 'lost_at') == 0 then
    redis.call('HSET', KEYS[1], 'lost_at', ARGV[2])
end
return redis.call('HMGET', KEYS[1], 'id', 'lost_at')
