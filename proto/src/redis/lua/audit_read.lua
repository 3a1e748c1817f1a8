-- audit_read: the newest admin actions.
-- KEYS[1] audit stream
-- ARGV[1] how many
-- Returns {{at, action, target, actor}, ...} newest first; actor '' for entries written before
--         actors were recorded
local out = {}
for _, e in ipairs(redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', ARGV[1])) do
  local f = {}
  for i = 1, #e[2], 2 do f[e[2][i]] = e[2][i + 1] end
  out[#out + 1] = {f.at or '0', f.action or '', f.target or '', f.actor or ''}
end
return out
