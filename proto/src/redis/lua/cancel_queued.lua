-- cancel_queued: cancel a tenant's queued jobs (also those waiting for a retry), newest first, as
-- cancel.lua cancels a queued job (a chain turn's running chain is canceled with it, as
-- chain_cancel.lua does, so no later turn replaces it); each audited. Running jobs are left
-- alone (counted). At most ARGV[4] canceled and ARGV[5] list members examined per call.
-- KEYS[1] tenant list zset   KEYS[2] audit stream
-- ARGV[1] key prefix   ARGV[2] tenant   ARGV[3] upper bound ('+' or '(' .. member)
-- ARGV[4] most canceled   ARGV[5] most members examined   ARGV[6] now (ms)   ARGV[7] retention (s)
-- ARGV[8] events maxlen   ARGV[9] audit maxlen   ARGV[10] actor
-- Returns {{canceled jids...}, running jobs met, next cursor or ''}: the cursor is the last
--         member examined, '' when the list holds nothing below it
local prefix, now = ARGV[1], ARGV[6]
local cap, budget = tonumber(ARGV[4]), tonumber(ARGV[5])
local members = redis.call('ZRANGE', KEYS[1], ARGV[3], '-', 'BYLEX', 'REV', 'LIMIT', 0, budget)
local canceled, running, last = {}, 0, 0
for i, member in ipairs(members) do
  last = i
  local jid = string.sub(member, 22)
  local state = redis.call('HGET', job_key(prefix, jid), 'state')
  if state == 'running' then
    running = running + 1
  elseif state == 'queued' then
    cancel_queued_job(prefix, jid, now, ARGV[7], ARGV[8])
    audit(KEYS[2], ARGV[9], now, 'cancel_queued', ARGV[2] .. '/' .. jid, ARGV[10])
    table.insert(canceled, jid)
    if #canceled >= cap then break end
  end
end
local next_cursor = ''
if last > 0 and not (#members < budget and last == #members) then next_cursor = members[last] end
return {canceled, running, next_cursor}
