-- notify_retry: make a taken notification due again at a later time (delivery backoff), or give
-- it back without counting the take (a deferral: the taker had no room for it).
-- KEYS[1] notify zset   KEYS[2] notify attempts hash (jid -> times taken)
-- ARGV[1] job id   ARGV[2] due time (ms)   ARGV[3] 1 = uncount the take, 0 = keep it
-- Returns 1 when rescheduled, 0 when the notification no longer exists (acknowledged)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
if ARGV[3] == '1' and tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0') > 0 then
  redis.call('HINCRBY', KEYS[2], ARGV[1], -1)
end
return 1
