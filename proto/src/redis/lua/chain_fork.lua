-- chain_fork: a new chain sharing turns 1..from of another (the same job ids; nothing re-runs),
-- with turn `from` as its last good frame. It starts succeeded, ready for chain_append.
-- KEYS[1] source chain hash   KEYS[2] new chain hash
-- ARGV[1] key prefix   ARGV[2] new chain id   ARGV[3] from turn   ARGV[4] now (ms)
-- ARGV[5] retention (s)
-- Returns {'forked'} | {'not_found'} | {'exists'} | {'range', turns} | {'not_succeeded', state or ''}
local prefix, from, now = ARGV[1], tonumber(ARGV[3]), ARGV[4]
local c = redis.call('HMGET', KEYS[1], 'id', 'turns', 'tenant', 'carry', 'on_failure', 'seed',
  'input', 'webhook', 'prio')
if not c[1] then return {'not_found'} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {'exists'} end
if from < 1 or from > tonumber(c[2]) then return {'range', c[2]} end
local jid = redis.call('HGET', KEYS[1], 'j:' .. from)
local state = redis.call('HGET', job_key(prefix, jid), 'state')
if state ~= 'succeeded' then return {'not_succeeded', state or ''} end
redis.call('HSET', KEYS[2], 'id', ARGV[2], 'tenant', c[3], 'status', 'succeeded', 'carry', c[4],
  'on_failure', c[5], 'seed', c[6], 'input', c[7], 'webhook', c[8], 'prio', c[9],
  'created_at', now, 'finished_at', now, 'turns', from, 'current', from, 'last_good', from,
  'forked_from', '{"chain_id":"' .. c[1] .. '","turn":' .. from .. '}')
for i = 1, from do
  local v = redis.call('HMGET', KEYS[1], 'j:' .. i, 't:' .. i)
  redis.call('HSET', KEYS[2], 'j:' .. i, v[1], 't:' .. i, v[2])
end
redis.call('EXPIRE', KEYS[2], ARGV[5])
return {'forked'}
