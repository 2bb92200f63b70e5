-- Drop from an index (KEYS[1]) the destinations (ARGV[3..]) whose record is gone.
-- ARGV: what goes before and after an id in its keys' names (see destinations.destination_key_base), then the ids
for i = 3, #ARGV do
    if redis.call('EXISTS', ARGV[1] .. ARGV[i] .. ARGV[2] .. 'meta') == 0 then
        redis.call('SREM', KEYS[1], ARGV[i])
    end
end
