-- dead_requeue: re-queue a dead letter as a new job with the dead one's tenant, spec and
-- priority; the dead job stays dead and records the new id; its dead-letter entry goes; audited.
-- KEYS[1] dead job hash   KEYS[2] new job hash   KEYS[3] dead-letter stream   KEYS[4] audit stream
-- ARGV[1] key prefix   ARGV[2] dead jid   ARGV[3] new jid   ARGV[4] now (ms)
-- ARGV[5] events maxlen   ARGV[6] audit maxlen
-- Returns {'requeued', new jid} | {'not_found'} | {'chain_turn'}
local v = redis.call('HMGET', KEYS[1], 'state', 'dlq_entry', 'chain', 'tenant', 'spec', 'prio')
if v[1] ~= 'dead' or not v[2] then return {'not_found'} end
if v[3] then return {'chain_turn'} end
local prefix, now, tenant = ARGV[1], ARGV[4], v[4]
redis.call('HSET', KEYS[2], 'id', ARGV[3], 'tenant', tenant, 'state', 'queued', 'spec', v[5],
  'prio', v[6], 'progress', '0', 'attempts', '0', 'crashes', '0', 'epoch', '0', 'cancel', '0',
  'created_at', now)
dispatch(prefix, ARGV[3], now)
index_job(prefix, tenant, now, ARGV[3])
redis.call('INCR', inflight_key(prefix, tenant))
emit_state(prefix, ARGV[3], 'queued', now, ARGV[5])
redis.call('XDEL', KEYS[3], v[2])
redis.call('HDEL', KEYS[1], 'dlq_entry')
redis.call('HSET', KEYS[1], 'requeued_as', ARGV[3])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[6], '*',
  'at', now, 'action', 'requeue_dead', 'target', ARGV[2] .. ' -> ' .. ARGV[3])
return {'requeued', ARGV[3]}
