-- notify_ack: forget notifications that were delivered or given up on.
-- KEYS[1] notify zset   KEYS[2] notify attempts hash
-- ARGV[1] .. ARGV[n] job ids
-- Returns the number of notifications removed
local removed = 0
for i = 1, #ARGV do
  removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('HDEL', KEYS[2], ARGV[i])
end
return removed
