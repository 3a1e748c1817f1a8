-- admin_jobs: one page of jobs across tenants (or of one tenant), newest first, filtered by
-- status. At most ARGV[5] index members are examined per call, so no page makes Redis walk the
-- whole index; the page may come back short, with a cursor. Read-only.
-- KEYS[1] list index zset (`jobs`, or `tenant:<t>:jobs` when one tenant is asked for)
-- ARGV[1] key prefix   ARGV[2] upper bound ('+' or '(' .. member)
-- ARGV[3] lower bound ('-' or '[' .. member)   ARGV[4] page size   ARGV[5] most members examined
-- ARGV[6] status ('' = any)
-- Returns {{job hash as HGETALL}..., next cursor or ''}: the cursor is the last member examined,
--         '' when the range holds nothing below it; jobs past retention are left out
local limit, budget, status = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local members = redis.call('ZRANGE', KEYS[1], ARGV[2], ARGV[3], 'BYLEX', 'REV', 'LIMIT', 0, budget)
local jobs, last = {}, 0
for i, member in ipairs(members) do
  last = i
  local job = job_key(ARGV[1], string.sub(member, 22))
  local state = redis.call('HGET', job, 'state')
  if state and (status == '' or state == status) then
    table.insert(jobs, redis.call('HGETALL', job))
    if #jobs >= limit then break end
  end
end
local next_cursor = ''
if last > 0 and not (#members < budget and last == #members) then next_cursor = members[last] end
return {jobs, next_cursor}
