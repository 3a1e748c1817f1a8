-- submit: create a job, or answer an idempotent replay.
-- KEYS[1] job hash              KEYS[2] class stream         KEYS[3] idempotency key (KEYS[1] when none)
-- KEYS[4] tenant list zset      KEYS[5] tenant in-flight     KEYS[6] job event stream
-- KEYS[7] global list zset `jobs` (admin_jobs.lua)
-- ARGV[1] key prefix   ARGV[2] jid   ARGV[3] tenant   ARGV[4] spec JSON   ARGV[5] body hash
-- ARGV[6] now (ms)     ARGV[7] idempotency TTL (s), 0 = no key   ARGV[8] max in flight (0 = none)
-- ARGV[9] class (hi|std|bulk)   ARGV[10] chain JSON or ''   ARGV[11] list member
-- ARGV[12] list cutoff (members below it are past retention)   ARGV[13] events maxlen
-- ARGV[14] most jobs the tenant may hold in the retention period (0 = no limit)
-- ARGV[15] LoRA set id ('' = no LoRAs)   ARGV[16] affinity delay (ms): a job whose LoRA set a
--          worker holds is offered to that worker alone that long (prelude `lora_holder`);
--          0 = no LoRA affinity
-- Returns {'created', jid} | {'replay', jid} | {'conflict'} | {'too_many', in_flight}
--       | {'too_many_retained', 'jobs', held, adding}
local idem_ttl = tonumber(ARGV[7])
if idem_ttl > 0 then
  local prev = redis.call('GET', KEYS[3])
  if prev then
    local sep = string.find(prev, '|', 1, true)
    if string.sub(prev, sep + 1) == ARGV[5] then
      return {'replay', string.sub(prev, 1, sep - 1)}
    end
    return {'conflict'}
  end
end

local limit = tonumber(ARGV[8])
local in_flight = tonumber(redis.call('GET', KEYS[5]) or '0')
if limit > 0 and in_flight >= limit then return {'too_many', in_flight} end
local held = retained_jobs(ARGV[1], ARGV[3], ARGV[12])
if over_limit(held, 1, ARGV[14]) then return {'too_many_retained', 'jobs', held, 1} end

local now = ARGV[6]
local holder = nil
if tonumber(ARGV[16]) > 0 then holder = lora_holder(ARGV[1], ARGV[15]) end
local entry
if holder then
  entry = offer_to_worker(ARGV[1], ARGV[2], holder, now, ARGV[16])
else
  -- No MAXLEN on work streams: trimming happens in reap, below everything still pending.
  entry = redis.call('XADD', KEYS[2], '*', 'jid', ARGV[2], 'at', now)
end
redis.call('HSET', KEYS[1], 'id', ARGV[2], 'tenant', ARGV[3], 'state', 'queued', 'spec', ARGV[4],
  'prio', ARGV[9], 'progress', '0', 'attempts', '0', 'crashes', '0', 'epoch', '0', 'cancel', '0',
  'created_at', now, 'entry', entry)
if ARGV[10] ~= '' then redis.call('HSET', KEYS[1], 'chain', ARGV[10]) end
if ARGV[15] ~= '' then redis.call('HSET', KEYS[1], 'loraset', ARGV[15]) end
if idem_ttl > 0 then
  redis.call('SET', KEYS[3], ARGV[2] .. '|' .. ARGV[5], 'EX', idem_ttl)
end
redis.call('ZADD', KEYS[4], 0, ARGV[11])
redis.call('ZADD', KEYS[7], 0, ARGV[11])
redis.call('INCR', KEYS[5])
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[13], '*', 'e',
  '{"type":"state","status":"queued","at":' .. now .. '}')
return {'created', ARGV[2]}
