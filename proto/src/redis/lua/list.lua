-- list: one page of a tenant's jobs, newest first. Members are `<created_at:020>:<jid>` with
-- score 0, so lexical order is creation order and a member is a cursor. Read-only.
-- KEYS[1] tenant list zset
-- ARGV[1] key prefix   ARGV[2] upper bound ('+' or '(' .. cursor)   ARGV[3] page size
-- Returns {{job hash as HGETALL}..., next cursor or ''}; jobs past retention are left out
local limit = tonumber(ARGV[3])
local members = redis.call('ZRANGE', KEYS[1], ARGV[2], '-', 'BYLEX', 'REV', 'LIMIT', 0, limit + 1)
local jobs = {}
for i = 1, math.min(limit, #members) do
  local jid = string.sub(members[i], 22)
  local h = redis.call('HGETALL', job_key(ARGV[1], jid))
  if #h > 0 then table.insert(jobs, h) end
end
local next_cursor = ''
if #members > limit then next_cursor = members[limit] end
return {jobs, next_cursor}
