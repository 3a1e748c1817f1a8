-- progress: record progress, publish it, and renew the lease, if the caller's epoch is current.
-- KEYS[1] job hash   KEYS[2] leases zset   KEYS[3] job event stream
-- ARGV[1] jid   ARGV[2] epoch   ARGV[3] lease_until (ms)   ARGV[4] step   ARGV[5] total
-- ARGV[6] progress fraction   ARGV[7] now (ms)   ARGV[8] events maxlen
-- Returns {'ok', cancel requested (0|1)} | {'not_found'} | {'stale'}
local verdict = check_lease(KEYS[1], ARGV[2])
if verdict ~= 'ok' then return {verdict} end
redis.call('HSET', KEYS[1], 'lease_until', ARGV[3], 'progress', ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[8], '*', 'e',
  '{"type":"progress","step":' .. ARGV[4] .. ',"total":' .. ARGV[5] .. ',"at":' .. ARGV[7] .. '}')
return {'ok', tonumber(redis.call('HGET', KEYS[1], 'cancel'))}
