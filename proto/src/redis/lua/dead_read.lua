-- dead_read: the newest dead letters.
-- KEYS[1] dead-letter stream
-- ARGV[1] how many
-- Returns {{jid, reason, crashes, attempts, at}, ...} newest first
local out = {}
for _, e in ipairs(redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', ARGV[1])) do
  local f = {}
  for i = 1, #e[2], 2 do f[e[2][i]] = e[2][i + 1] end
  out[#out + 1] = {f.jid or '', f.reason or '', f.crashes or '0', f.attempts or '0', f.at or '0'}
end
return out
