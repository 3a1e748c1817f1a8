-- release: give a running job back (graceful drain) without counting the attempt or a crash;
-- the caller's epoch must be current. A job whose cancel was requested ends canceled instead.
-- Noted in the job's history.
-- KEYS[1] job hash
-- ARGV[1] key prefix   ARGV[2] jid   ARGV[3] epoch   ARGV[4] now (ms)   ARGV[5] group
-- ARGV[6] retention (s)   ARGV[7] events maxlen
-- Returns {'released'} | {'canceled'} | {'not_found'} | {'stale'}
local prefix, jid, now = ARGV[1], ARGV[2], ARGV[4]
local verdict = check_lease(KEYS[1], ARGV[3])
if verdict ~= 'ok' then return {verdict} end
ack(prefix, jid, ARGV[5])
local worker = redis.call('HGET', KEYS[1], 'worker')
if redis.call('HGET', KEYS[1], 'cancel') == '1' then
  note_history(prefix, jid, 'released', now, attempt_fields(worker, ARGV[3], 'outcome', '"canceled"'))
  finish(prefix, jid, 'canceled', now, ARGV[6], ARGV[7])
  return {'canceled'}
end
note_history(prefix, jid, 'released', now, attempt_fields(worker, ARGV[3], 'outcome', '"queued"'))
redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HINCRBY', KEYS[1], 'attempts', -1)
requeue(prefix, jid, now, ARGV[7])
return {'released'}
