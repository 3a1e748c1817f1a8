-- chain_get: a chain record and the jobs of its turns, in one round trip. Read-only.
-- KEYS[1] chain hash
-- ARGV[1] key prefix
-- Returns {} when there is no such chain, else {{chain hash as HGETALL},
--   {{job hash as HGETALL, empty when not created (or past retention)} per turn 1..n}}
local chain = redis.call('HGETALL', KEYS[1])
if #chain == 0 then return {} end
local n = tonumber(redis.call('HGET', KEYS[1], 'turns'))
local jobs = {}
for i = 1, n do
  local jid = redis.call('HGET', KEYS[1], 'j:' .. i)
  jobs[i] = redis.call('HGETALL', job_key(ARGV[1], jid))
end
return {chain, jobs}
