-- claim: read the next dispatch entry and start its job, in one step, so an entry is never
-- pending without a lease. This worker's affinity stream (chain turns offered to it) comes
-- first, then the class streams in priority order. Entries of jobs that are no longer queued
-- (canceled, or claimed through the other offer) or that were superseded by a newer entry are
-- acknowledged (class streams) or deleted (affinity stream) and skipped. The claim is noted in
-- the job's history.
-- KEYS[1] stream q:hi   KEYS[2] stream q:std   KEYS[3] stream q:bulk   KEYS[4] leases zset
-- KEYS[5] this worker's affinity stream q:w:<worker>   KEYS[6] delay zset
-- ARGV[1] key prefix   ARGV[2] group   ARGV[3] worker (consumer name)   ARGV[4] now (ms)
-- ARGV[5] lease_until (ms)   ARGV[6] events maxlen   ARGV[7] most entries to skip per call
-- Returns {'claimed', {job hash as HGETALL}}
--       | {'empty', last id hi, last id std, last id bulk, last id affinity}
--         (for a blocking XREAD after them)
--       | {'busy'}  (skip budget used up; call again)
local prefix, group, worker, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local budget = tonumber(ARGV[7])

local function read_one(stream)
  local r = redis.pcall('XREADGROUP', 'GROUP', group, worker, 'COUNT', 1, 'STREAMS', stream, '>')
  if type(r) == 'table' and r.err then
    if not string.find(r.err, 'NOGROUP', 1, true) then return redis.error_reply(r.err) end
    redis.call('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
    r = redis.call('XREADGROUP', 'GROUP', group, worker, 'COUNT', 1, 'STREAMS', stream, '>')
  end
  if not r then return nil end
  return r[1][2][1]
end

-- The job of entry `id` if that entry may start it: queued, and the entry is its current one.
local function startable(jid, id)
  local job = job_key(prefix, jid)
  local v = redis.call('HMGET', job, 'state', 'entry', 'attempts', 'epoch')
  if v[1] == 'queued' and v[2] == id then return job, v end
  return nil
end

local function start(job, jid, v)
  redis.call('HSET', job, 'state', 'running', 'lease_until', ARGV[5], 'worker', worker,
    'started_at', now, 'progress', '0', 'attempts', tonumber(v[3]) + 1,
    'epoch', tonumber(v[4]) + 1)
  redis.call('ZADD', KEYS[4], ARGV[5], jid)
  emit_state(prefix, jid, 'running', now, ARGV[6])
  note_history(prefix, jid, 'claimed', now,
    attempt_fields(worker, tonumber(v[4]) + 1, 'attempt', tonumber(v[3]) + 1))
end

-- Affinity offers: no consumer group (one reader); an entry is deleted once read, whatever
-- becomes of it. A job started from here has no class-stream entry to acknowledge later, and
-- its delay fallback is withdrawn.
while true do
  local first = redis.call('XRANGE', KEYS[5], '-', '+', 'COUNT', 1)[1]
  if not first then break end
  local id, jid = first[1], first[2][2]
  redis.call('XDEL', KEYS[5], id)
  local job, v = startable(jid, id)
  if job then
    start(job, jid, v)
    redis.call('HDEL', job, 'entry')
    redis.call('ZREM', KEYS[6], jid)
    return {'claimed', redis.call('HGETALL', job)}
  end
  budget = budget - 1
  if budget <= 0 then return {'busy'} end
end

for i = 1, 3 do
  while true do
    local entry = read_one(KEYS[i])
    if not entry then break end
    if entry.err then return entry end
    local id, fields = entry[1], entry[2]
    local jid = fields[2]
    local job, v = startable(jid, id)
    if job then
      start(job, jid, v)
      return {'claimed', redis.call('HGETALL', job)}
    end
    redis.call('XACK', KEYS[i], group, id)
    budget = budget - 1
    if budget <= 0 then return {'busy'} end
  end
end

local last = {'empty'}
for i = 1, 3 do
  local top = redis.call('XREVRANGE', KEYS[i], '+', '-', 'COUNT', 1)
  if top[1] then last[i + 1] = top[1][1] else last[i + 1] = '0-0' end
end
-- The affinity stream is empty now (everything read was deleted).
last[5] = '0-0'
return last
