-- dead_requeue: re-queue a dead letter as a new job with the dead one's tenant, spec and
-- priority; the dead job stays dead and records the new id; its dead-letter entry goes; audited.
-- KEYS[1] dead job hash   KEYS[2] new job hash   KEYS[3] dead-letter stream   KEYS[4] audit stream
-- ARGV[1] key prefix   ARGV[2] dead jid   ARGV[3] new jid   ARGV[4] now (ms)
-- ARGV[5] events maxlen   ARGV[6] audit maxlen   ARGV[7] actor
-- Returns {'requeued', new jid} | {'not_found'} | {'chain_turn'}
local v = redis.call('HMGET', KEYS[1], 'state', 'dlq_entry', 'chain', 'tenant', 'spec', 'prio')
if v[1] ~= 'dead' or not v[2] then return {'not_found'} end
if v[3] then return {'chain_turn'} end
requeue_dead_letter(ARGV[1], ARGV[2], v, ARGV[3], ARGV[4], KEYS[3], ARGV[5])
audit(KEYS[4], ARGV[6], ARGV[4], 'requeue_dead', ARGV[2] .. ' -> ' .. ARGV[3],
  ARGV[7])
return {'requeued', ARGV[3]}
