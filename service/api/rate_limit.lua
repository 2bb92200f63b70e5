-- A token bucket per tenant.
-- KEYS (BucketKeys): bucket
-- ARGV (BucketArgs): rate, burst, now
-- bucket is the tenant's; rate in tokens/s; now in s ('' for Redis's clock).
-- Returns {allowed (1/0), seconds until a token is free}.
-- Every API process fills the same bucket: Redis's clock times it, not theirs (one ahead would refill it early).
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = redis_now(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed = 0
local wait = 0
if tokens >= 1 then
    tokens = tokens - 1
    allowed = 1
else
    wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now)
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return {allowed, tostring(wait)}
