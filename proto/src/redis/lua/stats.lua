-- stats: ready entries per class (undelivered to the group), age of the oldest one, running,
-- delayed and dead-letter counts. Read-only.
-- KEYS[1] stream q:hi   KEYS[2] stream q:std   KEYS[3] stream q:bulk   KEYS[4] delay zset
-- KEYS[5] leases zset   KEYS[6] dead-letter stream
-- ARGV[1] group
-- Returns {ready hi, ready std, ready bulk, delayed, running, dead letters, oldest entry 'at' (ms) or -1}
local oldest = -1
local out = {}
for i = 1, 3 do
  local after = nil
  local lag = nil
  local groups = redis.pcall('XINFO', 'GROUPS', KEYS[i])
  if type(groups) == 'table' and not groups.err then
    for _, g in ipairs(groups) do
      local info = {}
      for j = 1, #g, 2 do info[g[j]] = g[j + 1] end
      if info['name'] == ARGV[1] then
        after = '(' .. info['last-delivered-id']
        lag = info['lag']
      end
    end
  end
  after = after or '-'
  -- lag is nil when Redis cannot tell; count the undelivered entries then.
  if type(lag) ~= 'number' then lag = #redis.call('XRANGE', KEYS[i], after, '+') end
  out[i] = lag
  if lag > 0 then
    local first = redis.call('XRANGE', KEYS[i], after, '+', 'COUNT', 1)[1]
    if first then
      local fields = first[2]
      for j = 1, #fields, 2 do
        if fields[j] == 'at' then
          local at = tonumber(fields[j + 1])
          if oldest < 0 or at < oldest then oldest = at end
        end
      end
    end
  end
end
return {out[1], out[2], out[3], redis.call('ZCARD', KEYS[4]), redis.call('ZCARD', KEYS[5]),
  redis.call('XLEN', KEYS[6]), oldest}
