-- cancel: a queued job (also one waiting for a retry) ends canceled at once; its stream entry
-- stays and is skipped by claim (no XDEL, which would break lag). A running job gets the cancel
-- flag, which its worker reads from the next heartbeat or progress call. Both are noted in the
-- job's history.
-- KEYS[1] job hash   KEYS[2] delay zset
-- ARGV[1] key prefix   ARGV[2] jid   ARGV[3] now (ms)   ARGV[4] retention (s)   ARGV[5] events maxlen
-- Returns {'canceled'} | {'requested'} | {'already'} | {'not_found'}
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'not_found'} end
if state == 'running' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
  note_history(ARGV[1], ARGV[2], 'cancel_requested', ARGV[3])
  return {'requested'}
end
if state ~= 'queued' then return {'already'} end
redis.call('ZREM', KEYS[2], ARGV[2])
note_history(ARGV[1], ARGV[2], 'canceled', ARGV[3])
finish(ARGV[1], ARGV[2], 'canceled', ARGV[3], ARGV[4], ARGV[5])
return {'canceled'}
