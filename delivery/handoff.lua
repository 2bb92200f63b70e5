-- A webhook leaves the general schedule for its destination (a replayed dead letter, or an entry written before
-- destinations existed): it is owed there from now on, and leased to the caller at once when the destination
-- lets it start now.
-- KEYS (HandoffKeys): due, delivery, dst_meta, dst_due, dst_flight, dst_deadline
-- ARGV (HandoffArgs): flow_now, flow_settings, event_id, destination_id, destination_tenant, destination_origin,
--   untried_replay
-- due is the general schedule; flow_now and flow_settings the two of dst_init; untried_replay is 'replay' for a
-- replay not attempted yet (it gets a real attempt before it can expire: see dst_untried), else ''
-- Returns {'gone'}, {'owed'} or {'admitted', lease token}.
dst_init(ARGV[1], ARGV[2])
local event_id = ARGV[3]
redis.call('ZREM', KEYS[1], event_id)  -- the first write: runs when the store is full (delivery/store_refusals.py)
if redis.call('EXISTS', KEYS[2]) == 0 then
    return {'gone'}
end
local d = {id = ARGV[4], meta = KEYS[3], due = KEYS[4], flight = KEYS[5], deadline = KEYS[6]}
if dst_owes(d, event_id) then
    return {'owed'}  -- handed over before (a second claim of a slow first handoff)
end
local token
if ARGV[7] == 'replay' then
    token = dst_accept_replay(d, event_id, ARGV[5], ARGV[6])
else
    token = dst_accept(d, event_id, ARGV[5], ARGV[6])
end
if token then
    return {'admitted', token}
end
return {'owed'}
