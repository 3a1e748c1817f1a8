-- worker_list: the registry records of the workers whose entry has not expired at now.
-- KEYS[1] workers zset
-- ARGV[1] key prefix   ARGV[2] now (ms)
-- Returns {record JSON, ...} by worker id (a record whose key is gone is left out)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[2], '+inf')
local out = {}
for _, id in ipairs(ids) do
  local rec = redis.call('GET', worker_info_key(ARGV[1], id))
  if rec then out[#out + 1] = rec end
end
return out
