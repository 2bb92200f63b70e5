-- Drop from an index the destinations whose record is gone.
-- KEYS (IndexKeys): index
-- ARGV (PruneArgs): key_head, key_tail, then each of ids: a destination id
-- key_head and key_tail are what goes before and after an id in its keys' names (see
-- destinations.destination_key_base)
for i = 3, #ARGV do
    if redis.call('EXISTS', ARGV[1] .. ARGV[i] .. ARGV[2] .. 'meta') == 0 then
        redis.call('SREM', KEYS[1], ARGV[i])
    end
end
