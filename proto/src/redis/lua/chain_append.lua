-- chain_append: add a turn at the end of a chain. A running chain creates it when the turn before
-- it ends (advance_chain); a succeeded or failed chain runs again at once, from its last good
-- frame (or its input image), offered first to the worker of that frame.
-- KEYS[1] chain hash
-- ARGV[1] key prefix   ARGV[2] expected new turn number (turns + 1; the seed was derived for it)
-- ARGV[3] job id   ARGV[4] spec template ("input":null)   ARGV[5] now (ms)
-- ARGV[6] events maxlen   ARGV[7] affinity delay (ms)   ARGV[8] chains cutoff (ms)
-- ARGV[9] most turns the tenant may hold in the retention period (0 = no limit)
-- Returns {'appended', started (0|1)} | {'not_found'} | {'canceled'} | {'conflict', turns}
--       | {'too_many_retained', 'turns', held, 1}
--       | {'no_frame'} (a finished chain with no good turn and no input image)
--       | {'bad_template'} (no "input":null to splice the context into)
local prefix, now = ARGV[1], ARGV[5]
if not string.find(ARGV[4], '"input":null', 1, true) then return {'bad_template'} end
local c = redis.call('HMGET', KEYS[1], 'status', 'turns', 'last_good', 'input', 'tenant', 'id')
if not c[1] then return {'not_found'} end
if c[1] == 'canceled' then return {'canceled'} end
local turn = tonumber(ARGV[2])
if tonumber(c[2]) + 1 ~= turn then return {'conflict', c[2]} end
local _, turns_held = retained_chains(prefix, c[5], ARGV[8])
if over_limit(turns_held, 1, ARGV[9]) then return {'too_many_retained', 'turns', turns_held, 1} end
local source, worker = nil, nil
if c[1] ~= 'running' then
  local good = tonumber(c[3])
  if good > 0 then
    local job = job_key(prefix, redis.call('HGET', KEYS[1], 'j:' .. good))
    local v = redis.call('HMGET', job, 'result', 'worker')
    if not v[1] then return {'no_frame'} end
    source, worker = v[1], v[2]
  elseif not c[4] or c[4] == '' then
    return {'no_frame'}
  end
end
redis.call('HSET', KEYS[1], 'turns', turn, 'j:' .. turn, ARGV[3], 't:' .. turn, ARGV[4])
count_turn(prefix, c[5], c[6])
if c[1] == 'running' then return {'appended', 0} end
redis.call('HSET', KEYS[1], 'status', 'running')
redis.call('HDEL', KEYS[1], 'finished_at')
redis.call('PERSIST', KEYS[1])
start_turn(prefix, KEYS[1], turn, source, now, ARGV[6], worker, ARGV[7])
return {'appended', 1}
