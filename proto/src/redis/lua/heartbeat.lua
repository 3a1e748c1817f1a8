-- heartbeat: renew the lease if the caller's epoch is current.
-- KEYS[1] job hash   KEYS[2] leases zset
-- ARGV[1] jid   ARGV[2] epoch   ARGV[3] lease_until (ms)
-- Returns {'ok', cancel requested (0|1)} | {'not_found'} | {'stale'}
local verdict = check_lease(KEYS[1], ARGV[2])
if verdict ~= 'ok' then return {verdict} end
redis.call('HSET', KEYS[1], 'lease_until', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return {'ok', tonumber(redis.call('HGET', KEYS[1], 'cancel'))}
