-- chain_cancel: end a running chain `canceled`; its live turn is canceled like cancel.lua does
-- (at once when queued; the cancel flag when running). No later turn is created: advance_chain
-- ignores canceled chains.
-- KEYS[1] chain hash   KEYS[2] delay zset
-- ARGV[1] key prefix   ARGV[2] now (ms)   ARGV[3] retention (s)   ARGV[4] events maxlen
-- Returns {'canceled'} | {'requested'} | {'already'} | {'not_found'}
local prefix, now = ARGV[1], ARGV[2]
local c = redis.call('HMGET', KEYS[1], 'status', 'current')
if not c[1] then return {'not_found'} end
if c[1] ~= 'running' then return {'already'} end
end_chain(KEYS[1], 'canceled', now, ARGV[3])
local jid = redis.call('HGET', KEYS[1], 'j:' .. c[2])
local job = job_key(prefix, jid)
local state = redis.call('HGET', job, 'state')
if state == 'running' then
  redis.call('HSET', job, 'cancel', '1')
  note_history(prefix, jid, 'cancel_requested', now)
  return {'requested'}
end
if state == 'queued' then
  redis.call('ZREM', KEYS[2], jid)
  note_history(prefix, jid, 'canceled', now)
  finish(prefix, jid, 'canceled', now, ARGV[3], ARGV[4])
end
return {'canceled'}
