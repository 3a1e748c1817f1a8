-- chain_fork: a new chain sharing turns 1..from of another (the same job ids; nothing re-runs),
-- with turn `from` as its last good frame, then `m` turns appended: all or nothing. Without
-- appended turns it starts succeeded, ready for chain_append; with them it runs the first at once
-- from turn `from`'s frame, offered first to the worker that made that frame.
-- KEYS[1] source chain hash   KEYS[2] new chain hash
-- ARGV[1] key prefix   ARGV[2] new chain id   ARGV[3] from turn   ARGV[4] now (ms)
-- ARGV[5] retention (s)   ARGV[6] most turns a chain may have   ARGV[7] chains cutoff (ms)
-- ARGV[8] most chains, ARGV[9] most turns the tenant may hold in the retention period (0 = none)
-- ARGV[10] events maxlen   ARGV[11] affinity delay (ms)   ARGV[12] number of appended turns m
-- ARGV[13 + 2(i-1)] job id, ARGV[14 + 2(i-1)] template ("input":null) of appended turn i
-- Returns {'forked'} | {'not_found'} | {'exists'} | {'range', turns} | {'not_succeeded', state or ''}
--       | {'too_long', most turns} | {'bad_template'}
--       | {'too_many_retained', 'chains'|'turns', held, adding}
local prefix, from, now = ARGV[1], tonumber(ARGV[3]), ARGV[4]
local m = tonumber(ARGV[12])
local c = redis.call('HMGET', KEYS[1], 'id', 'turns', 'tenant', 'carry', 'on_failure', 'seed',
  'input', 'webhook', 'prio')
if not c[1] then return {'not_found'} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {'exists'} end
if from < 1 or from > tonumber(c[2]) then return {'range', c[2]} end
if from + m > tonumber(ARGV[6]) then return {'too_long', ARGV[6]} end
for i = 1, m do
  if not string.find(ARGV[14 + 2 * (i - 1)], '"input":null', 1, true) then
    return {'bad_template'}
  end
end
local jid = redis.call('HGET', KEYS[1], 'j:' .. from)
local frame = redis.call('HMGET', job_key(prefix, jid), 'state', 'result', 'worker')
if frame[1] ~= 'succeeded' then return {'not_succeeded', frame[1] or ''} end
local chains, turns = retained_chains(prefix, c[3], ARGV[7])
if over_limit(chains, 1, ARGV[8]) then return {'too_many_retained', 'chains', chains, 1} end
if over_limit(turns, from + m, ARGV[9]) then
  return {'too_many_retained', 'turns', turns, from + m}
end

redis.call('HSET', KEYS[2], 'id', ARGV[2], 'tenant', c[3], 'status', 'succeeded', 'carry', c[4],
  'on_failure', c[5], 'seed', c[6], 'input', c[7], 'webhook', c[8], 'prio', c[9],
  'created_at', now, 'finished_at', now, 'turns', from + m, 'current', from, 'last_good', from,
  'forked_from', '{"chain_id":"' .. c[1] .. '","turn":' .. from .. '}')
for i = 1, from do
  local v = redis.call('HMGET', KEYS[1], 'j:' .. i, 't:' .. i)
  redis.call('HSET', KEYS[2], 'j:' .. i, v[1], 't:' .. i, v[2])
end
for i = 1, m do
  redis.call('HSET', KEYS[2], 'j:' .. (from + i), ARGV[13 + 2 * (i - 1)],
    't:' .. (from + i), ARGV[14 + 2 * (i - 1)])
end
index_chain(prefix, c[3], ARGV[2], now, from + m)
if m == 0 then
  redis.call('EXPIRE', KEYS[2], ARGV[5])
  return {'forked'}
end
redis.call('HSET', KEYS[2], 'status', 'running')
redis.call('HDEL', KEYS[2], 'finished_at')
start_turn(prefix, KEYS[2], from + 1, frame[2], now, ARGV[10], frame[3], ARGV[11])
return {'forked'}
