-- Drop the index entries of dead letters older than the retention (their records have expired by then).
-- KEYS (TrimKeys): index
-- ARGV (TrimArgs): retention_s, now
-- index is a dead-letter index (sorted set: id -> unix ms the letter died, the time it shows); now is unix s, or ''
-- for Redis's clock (which expires the records: any worker's trim agrees)
-- Returns how many entries were dropped.
local now = redis_now(ARGV[2])
return redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', (now - tonumber(ARGV[1])) * 1000)
