-- dead_bulk: re-queue or dismiss every dead letter matching a filter, oldest first, as
-- dead_requeue.lua / dead_dismiss.lua do one (each audited the same way), at most ARGV[4] per
-- call and at most ARGV[5] entries examined, so one call stays bounded; chain turns are not
-- re-queued (skipped, as dead_requeue.lua refuses them). Entries whose job expired are skipped.
-- KEYS[1] dead-letter stream   KEYS[2] audit stream
-- ARGV[1] key prefix   ARGV[2] action (requeue|dismiss)   ARGV[3] start ('-' or '(' .. entry id)
-- ARGV[4] most affected   ARGV[5] most entries examined   ARGV[6] tenant ('' = any)
-- ARGV[7] dead-lettered before (ms, '' = any)   ARGV[8] dead-lettered after (ms, '' = any)
-- ARGV[9] now (ms)   ARGV[10] events maxlen   ARGV[11] audit maxlen   ARGV[12] actor
-- ARGV[13..] new job ids, one per possible re-queue
-- Returns {{dead jid, new jid or ''}..., {skipped chain turn jids...}, next cursor or ''}: the
--         cursor is the last entry examined, '' when the stream holds nothing after it
local prefix, action, now = ARGV[1], ARGV[2], ARGV[9]
local cap, budget = tonumber(ARGV[4]), tonumber(ARGV[5])
local before, after = tonumber(ARGV[7]), tonumber(ARGV[8])
local entries = redis.call('XRANGE', KEYS[1], ARGV[3], '+', 'COUNT', budget)
local affected, skipped, last = {}, {}, 0
for i, e in ipairs(entries) do
  last = i
  local f = {}
  for j = 1, #e[2], 2 do f[e[2][j]] = e[2][j + 1] end
  local at = tonumber(f.at) or 0
  if f.jid and (not before or at < before) and (not after or at > after) then
    local v = redis.call('HMGET', job_key(prefix, f.jid), 'state', 'dlq_entry', 'chain', 'tenant',
      'spec', 'prio')
    if v[1] == 'dead' and v[2] == e[1] and (ARGV[6] == '' or v[4] == ARGV[6]) then
      if action == 'dismiss' then
        redis.call('XDEL', KEYS[1], e[1])
        redis.call('HDEL', job_key(prefix, f.jid), 'dlq_entry')
        audit(KEYS[2], ARGV[11], now, 'dismiss_dead', f.jid, ARGV[12])
        table.insert(affected, {f.jid, ''})
      elseif v[3] then
        table.insert(skipped, f.jid)
      else
        local new_jid = ARGV[13 + #affected]
        requeue_dead_letter(prefix, f.jid, v, new_jid, now, KEYS[1], ARGV[10])
        audit(KEYS[2], ARGV[11], now, 'requeue_dead', f.jid .. ' -> ' .. new_jid, ARGV[12])
        table.insert(affected, {f.jid, new_jid})
      end
      if #affected >= cap then break end
    end
  end
end
local next_cursor = ''
if last > 0 and not (#entries < budget and last == #entries) then next_cursor = entries[last][1] end
return {affected, skipped, next_cursor}
