-- An Idempotency-Key whose task lives in another partition than the key (see service.tasks.store): claim it for a
-- task before that task is stored, or give a claim back.
-- KEYS (ClaimKeys): claim
-- ARGV (ClaimArgs): mode, value, ttl_s, new_value
-- claim is the key's claim. Each mode reads what it needs ('' in the others):
-- 'claim': value ('<fingerprint>\n<task id>\n<answer>'), ttl_s
-- 'release': value, the one the caller claimed with (the claim is dropped only if it is still that)
-- 'replace': value, the one read, new_value, ttl_s (taken over only if it is still the one read)
-- Returns for claim {'claimed'} or {'held', value, ttl_s left}; for release and replace 1 (done) or 0.
local mode = ARGV[1]
if mode == 'claim' then
    local held = redis.call('GET', KEYS[1])
    if held then
        return {'held', held, redis.call('TTL', KEYS[1])}
    end
    redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
    return {'claimed'}
end
if redis.call('GET', KEYS[1]) ~= ARGV[2] then
    return 0
end
if mode == 'release' then
    redis.call('DEL', KEYS[1])
else
    redis.call('SET', KEYS[1], ARGV[4], 'EX', ARGV[3])
end
return 1
