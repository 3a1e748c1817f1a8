-- prelude: helpers prepended to every script at load time (see redis/scripts.rs).
-- Key suffixes mirror proto/src/keys.rs; every key starts with the prefix `kontext:{<ns>}:`, so
-- all keys a script touches share one hash tag (one cluster slot). Time is always ARGV `now`
-- (ms); no script ever calls TIME.

local function job_key(prefix, jid) return prefix .. 'job:' .. jid end
local function events_key(prefix, jid) return prefix .. 'ev:' .. jid end
local function class_key(prefix, class) return prefix .. 'q:' .. class end
local function leases_key(prefix) return prefix .. 'leases' end
local function inflight_key(prefix, tenant) return prefix .. 'tenant:' .. tenant .. ':inflight' end

-- Append one JobEvent (JSON, serde tag "type") to the job's event stream.
local function emit(prefix, jid, json, maxlen)
  redis.call('XADD', events_key(prefix, jid), 'MAXLEN', '~', maxlen, '*', 'e', json)
end

local function emit_state(prefix, jid, state, now, maxlen)
  emit(prefix, jid, '{"type":"state","status":"' .. state .. '","at":' .. now .. '}', maxlen)
end

-- Put the job on its class stream; the new entry becomes the only one that may start it.
local function dispatch(prefix, jid, now)
  local job = job_key(prefix, jid)
  local entry = redis.call('XADD', class_key(prefix, redis.call('HGET', job, 'prio')), '*',
    'jid', jid, 'at', now)
  redis.call('HSET', job, 'entry', entry)
  return entry
end

-- Acknowledge the job's current dispatch entry (it leaves the consumer's pending list).
local function ack(prefix, jid, group)
  local job = job_key(prefix, jid)
  local v = redis.call('HMGET', job, 'entry', 'prio')
  if v[1] and v[2] then redis.call('XACK', class_key(prefix, v[2]), group, v[1]) end
end

-- 'ok' when the caller's epoch is current and the job is running, else 'not_found' | 'stale'.
local function check_lease(job, epoch)
  local v = redis.call('HMGET', job, 'state', 'epoch')
  if not v[1] then return 'not_found' end
  if v[2] ~= epoch or v[1] ~= 'running' then return 'stale' end
  return 'ok'
end

-- Move a job to a terminal state: no lease, one less in flight, event, notification, retention
-- clock starts. `set` / `del` are optional extra hash fields to write / delete in the same
-- commands (field, value, field, value...) / (field, field...).
local function finish(prefix, jid, state, now, retention_s, maxlen, set, del)
  local job = job_key(prefix, jid)
  redis.call('HSET', job, 'state', state, 'finished_at', now, unpack(set or {}))
  redis.call('HDEL', job, 'lease_until', unpack(del or {}))
  redis.call('ZREM', leases_key(prefix), jid)
  local inflight = inflight_key(prefix, redis.call('HGET', job, 'tenant'))
  if redis.call('DECR', inflight) <= 0 then redis.call('DEL', inflight) end
  emit_state(prefix, jid, state, now, maxlen)
  -- The notifier (webhooks, latency metrics) takes it from here; see notify_take.lua.
  redis.call('ZADD', prefix .. 'notify', now, jid)
  redis.call('EXPIRE', job, retention_s)
  redis.call('EXPIRE', events_key(prefix, jid), retention_s)
end

-- Put a job that is no longer running back in line: new entry, event.
local function requeue(prefix, jid, now, maxlen)
  local job = job_key(prefix, jid)
  redis.call('HSET', job, 'state', 'queued')
  redis.call('HDEL', job, 'worker', 'lease_until')
  redis.call('ZREM', leases_key(prefix), jid)
  dispatch(prefix, jid, now)
  emit_state(prefix, jid, 'queued', now, maxlen)
end

-- ---------------------------------------------------------------------------------------------
