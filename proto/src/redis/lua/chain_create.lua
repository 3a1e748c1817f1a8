-- chain_create: create a chain record and its first turn's job (dispatched to its class stream).
-- KEYS[1] chain hash   KEYS[2] tenant in-flight counter
-- ARGV[1] key prefix   ARGV[2] chain id   ARGV[3] tenant   ARGV[4] now (ms)
-- ARGV[5] max in flight (0 = none)   ARGV[6] carry   ARGV[7] on_failure   ARGV[8] chain seed
-- ARGV[9] input image JSON or ''   ARGV[10] webhook URL or ''   ARGV[11] class (hi|std|bulk)
-- ARGV[12] events maxlen   ARGV[13] number of turns n
-- ARGV[14] jobs list cutoff (list_member form)   ARGV[15] chains cutoff (ms)
-- ARGV[16..18] most jobs, chains, turns the tenant may hold in the retention period (0 = none)
-- ARGV[19 + 2(i-1)] job id of turn i   ARGV[20 + 2(i-1)] spec of turn i (turn 1: complete;
-- later turns: templates with "input":null), for i = 1..n
-- Returns {'created'} | {'exists'} | {'too_many', in_flight}
--       | {'too_many_retained', 'jobs'|'chains'|'turns', held, adding}
local prefix, cid, now = ARGV[1], ARGV[2], ARGV[4]
if redis.call('EXISTS', KEYS[1]) == 1 then return {'exists'} end
local limit = tonumber(ARGV[5])
local in_flight = tonumber(redis.call('GET', KEYS[2]) or '0')
if limit > 0 and in_flight >= limit then return {'too_many', in_flight} end
local n = tonumber(ARGV[13])
local jobs = retained_jobs(prefix, ARGV[3], ARGV[14])
if over_limit(jobs, 1, ARGV[16]) then return {'too_many_retained', 'jobs', jobs, 1} end
local chains, turns = retained_chains(prefix, ARGV[3], ARGV[15])
if over_limit(chains, 1, ARGV[17]) then return {'too_many_retained', 'chains', chains, 1} end
if over_limit(turns, n, ARGV[18]) then return {'too_many_retained', 'turns', turns, n} end

redis.call('HSET', KEYS[1], 'id', cid, 'tenant', ARGV[3], 'status', 'running', 'carry', ARGV[6],
  'on_failure', ARGV[7], 'seed', ARGV[8], 'input', ARGV[9], 'webhook', ARGV[10], 'prio', ARGV[11],
  'created_at', now, 'turns', n, 'current', 1, 'last_good', 0, 'forked_from', '')
for i = 1, n do
  redis.call('HSET', KEYS[1], 'j:' .. i, ARGV[19 + 2 * (i - 1)], 't:' .. i, ARGV[20 + 2 * (i - 1)])
end
index_chain(prefix, ARGV[3], cid, now, n)
create_turn_job(prefix, KEYS[1], 1, ARGV[20], now, ARGV[12], nil, nil)
return {'created'}
