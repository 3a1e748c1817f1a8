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

-- ---------------------------------------------------------------------------------------------
-- Chains (docs/queue-protocol.md §Chains). The chain hash `chain:<cid>` holds: id, tenant, status
-- (running | succeeded | failed | canceled), carry (image | latent), on_failure (stop | continue),
-- seed, input (InputImage JSON or ''), webhook, prio (class of every turn), created_at,
-- finished_at, turns (count), current (turn whose job is live or ended last), last_good (0 = none),
-- forked_from (ChainRef JSON or ''), and per turn i (1-based): t:<i> (spec template JSON; for i > 1
-- with "input":null, which the turn's creation replaces) and j:<i> (the job id planned for it).
local function chain_key(prefix, cid) return prefix .. 'chain:' .. cid end
local function affinity_key(prefix, worker) return prefix .. 'q:w:' .. worker end
-- Offers to a worker that went away are covered by the delay fallback; its stream then expires.
local AFFINITY_STREAM_TTL_S = 3600

-- LoRA affinity (docs/queue-protocol.md §LoRA affinity): which worker last completed a job with a
-- LoRA set, and which set each worker's engine holds. Both expire: a routing hint, never a rule.
local function lora_owner_key(prefix, set) return prefix .. 'lora:' .. set end
local function worker_lora_key(prefix, worker) return prefix .. 'w:' .. worker .. ':lora' end
local LORA_OWNER_TTL_S = 900
-- keys.rs usage: the usage counters of one day (days since 1970-01-01 UTC).
local function usage_key(prefix, day) return prefix .. 'usage:' .. day end
local USAGE_TTL_S = 400 * 86400

-- One succeeded job of `tenant` on `day` (usage.rs): its engine time, one image, its steps
-- (from the stored spec, which our code wrote).
local function record_usage(prefix, tenant, day, engine_ms, spec_json)
  local ok, spec = pcall(cjson.decode, spec_json or '')
  local steps = (ok and type(spec) == 'table' and tonumber(spec.steps)) or 0
  local key = usage_key(prefix, day)
  redis.call('HINCRBY', key, 'engine_ms|' .. tenant, tonumber(engine_ms) or 0)
  redis.call('HINCRBY', key, 'images|' .. tenant, 1)
  redis.call('HINCRBY', key, 'steps|' .. tenant, steps)
  redis.call('EXPIRE', key, USAGE_TTL_S)
end

-- Throughput history (throughput.rs, docs/queue-protocol.md §Throughput history): `tp:<minute>`
-- HASH per UTC minute of `now`: `succeeded`, `failed` and `b<i>`, the succeeded jobs' latencies
-- (submit → commit) per bucket i of LATENCY_BOUNDS_MS (ms, inclusive; i = #bounds: longer).
local LATENCY_BOUNDS_MS = {100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000, 200000, 500000, 1000000, 2000000}
local THROUGHPUT_TTL_S = 10800

-- One finished job: `outcome` is 'succeeded' (with its created_at, for the latency) or 'failed'.
local function record_throughput(prefix, now, outcome, created_at)
  local key = prefix .. 'tp:' .. string.format('%d', math.floor(tonumber(now) / 60000))
  redis.call('HINCRBY', key, outcome, 1)
  if outcome == 'succeeded' and created_at then
    local latency = tonumber(now) - tonumber(created_at)
    local bucket = #LATENCY_BOUNDS_MS
    for i, bound in ipairs(LATENCY_BOUNDS_MS) do
      if latency <= bound then bucket = i - 1; break end
    end
    redis.call('HINCRBY', key, 'b' .. bucket, 1)
  end
  redis.call('EXPIRE', key, THROUGHPUT_TTL_S)
end

-- keys.rs worker_info: a worker's registry record.
local function worker_info_key(prefix, worker) return prefix .. 'w:' .. worker .. ':info' end

-- The worker to offer a job with LoRA set `set` first: the set's last owner, if its engine still
-- holds that set; nil otherwise.
local function lora_holder(prefix, set)
  if not set or set == '' then return nil end
  local w = redis.call('GET', lora_owner_key(prefix, set))
  if w and redis.call('GET', worker_lora_key(prefix, w)) == set then return w end
  return nil
end

-- Offer job `jid` on `worker`'s affinity stream and, from now + delay_ms, to everyone (the delay
-- ZSET; claim skips whichever offer comes second). Returns the offer's entry id.
local function offer_to_worker(prefix, jid, worker, now, delay_ms)
  local stream = affinity_key(prefix, worker)
  local entry = redis.call('XADD', stream, '*', 'jid', jid, 'at', now)
  redis.call('EXPIRE', stream, AFFINITY_STREAM_TTL_S)
  redis.call('ZADD', prefix .. 'delay', tonumber(now) + tonumber(delay_ms), jid)
  return entry
end

-- After `worker` committed a job with LoRA set `set` ('' or nil: none): its engine now holds
-- exactly that set.
local function record_lora_set(prefix, worker, set)
  if not worker or worker == '' then return end
  if set and set ~= '' then
    redis.call('SET', lora_owner_key(prefix, set), worker, 'EX', LORA_OWNER_TTL_S)
    redis.call('SET', worker_lora_key(prefix, worker), set, 'EX', LORA_OWNER_TTL_S)
  else
    redis.call('DEL', worker_lora_key(prefix, worker))
  end
end

-- keys.rs list_member: `<created_at, 20 digits>:<jid>`.
local function list_member(now, jid) return string.rep('0', 20 - #now) .. now .. ':' .. jid end
-- keys.rs all_jobs: the list index of every tenant's jobs (admin_jobs.lua), trimmed with them.
local function all_jobs_key(prefix) return prefix .. 'jobs' end

-- A new job in its tenant's list index and the global one (same member in both).
local function index_job(prefix, tenant, now, jid)
  local member = list_member(now, jid)
  redis.call('ZADD', prefix .. 'tenant:' .. tenant .. ':jobs', 0, member)
  redis.call('ZADD', all_jobs_key(prefix), 0, member)
end

-- ---------------------------------------------------------------------------------------------
-- Retained-state quotas (queue.rs `RetainedLimits`), counted over the last retention period.
-- Chains: `tenant:<t>:chains` ZSET (cid -> created ms) and `tenant:<t>:chains:turns` HASH (cid ->
-- turns counted for it, and '_' -> their sum).
local function tenant_chains_key(prefix, tenant) return prefix .. 'tenant:' .. tenant .. ':chains' end

-- True when holding `held` and adding `adding` passes `limit` (0 = no limit).
local function over_limit(held, adding, limit)
  limit = tonumber(limit)
  return limit > 0 and held + adding > limit
end

-- Forgets the tenant's chains created before `cutoff` (ms); returns the chains and turns left.
local function retained_chains(prefix, tenant, cutoff)
  local idx = tenant_chains_key(prefix, tenant)
  local turns = idx .. ':turns'
  local old = redis.call('ZRANGEBYSCORE', idx, '-inf', '(' .. cutoff)
  if #old > 0 then
    local gone = 0
    for _, cid in ipairs(old) do
      gone = gone + tonumber(redis.call('HGET', turns, cid) or '0')
      redis.call('HDEL', turns, cid)
    end
    redis.call('HINCRBY', turns, '_', -gone)
    redis.call('ZREMRANGEBYSCORE', idx, '-inf', '(' .. cutoff)
  end
  return redis.call('ZCARD', idx), tonumber(redis.call('HGET', turns, '_') or '0')
end

-- Counts a new chain with `n` turns.
local function index_chain(prefix, tenant, cid, now, n)
  local idx = tenant_chains_key(prefix, tenant)
  redis.call('ZADD', idx, now, cid)
  redis.call('HSET', idx .. ':turns', cid, n)
  redis.call('HINCRBY', idx .. ':turns', '_', n)
end

-- Counts a turn appended to `cid`, if the chain is still counted.
local function count_turn(prefix, tenant, cid)
  local turns = tenant_chains_key(prefix, tenant) .. ':turns'
  if redis.call('HEXISTS', turns, cid) == 1 then
    redis.call('HINCRBY', turns, cid, 1)
    redis.call('HINCRBY', turns, '_', 1)
  end
end

-- Forgets the tenant's jobs created before `cutoff_member` from its list index (list_member
-- form), and everyone's from the global index; returns the tenant's jobs left.
local function retained_jobs(prefix, tenant, cutoff_member)
  local idx = prefix .. 'tenant:' .. tenant .. ':jobs'
  redis.call('ZREMRANGEBYLEX', idx, '-', '(' .. cutoff_member)
  -- The global index loses every tenant's jobs past the same cutoff.
  redis.call('ZREMRANGEBYLEX', all_jobs_key(prefix), '-', '(' .. cutoff_member)
  return redis.call('ZCARD', idx)
end

-- The InputImage JSON of a committed result (JobResult JSON), and its latent key if any. Only
-- strings and small integers are read, so cjson's number handling loses nothing.
local function frame_of(result_json)
  local r = cjson.decode(result_json)
  local input = '{"key":' .. cjson.encode(r.key) .. ',"width":' .. string.format('%d', r.width)
    .. ',"height":' .. string.format('%d', r.height) .. '}'
  local latent = nil
  if type(r.latent_key) == 'string' then latent = r.latent_key end
  return input, latent
end

-- A turn template with its context spliced in. Templates are serde output with "input":null; that
-- text cannot occur inside a JSON string (quotes are escaped there), so the first match is the
-- field. Splicing text keeps every other byte (u64 seeds, f32 guidance) exactly as Rust wrote it.
local function with_context(template, input_json, latent_key)
  local s, e = string.find(template, '"input":null', 1, true)
  if not s then return nil end
  local spec = string.sub(template, 1, s - 1) .. '"input":' .. input_json .. string.sub(template, e + 1)
  if latent_key then
    spec = '{"input_latent_key":' .. cjson.encode(latent_key) .. ',' .. string.sub(spec, 2)
  end
  return spec
end

-- Create the job of turn `turn` with the final `spec`, unless it exists (never twice). With a
-- `worker`, it is offered on that worker's affinity stream and, from now + affinity_ms, to
-- everyone (the delay ZSET; claim skips whichever offer comes second). Without, it is dispatched.
local function create_turn_job(prefix, ckey, turn, spec, now, maxlen, worker, affinity_ms)
  local c = redis.call('HMGET', ckey, 'id', 'j:' .. turn, 'tenant', 'prio')
  local jid = c[2]
  local job = job_key(prefix, jid)
  redis.call('HSET', ckey, 'current', turn)
  if redis.call('EXISTS', job) == 1 then return end
  redis.call('HSET', job, 'id', jid, 'tenant', c[3], 'state', 'queued', 'spec', spec, 'prio', c[4],
    'progress', '0', 'attempts', '0', 'crashes', '0', 'epoch', '0', 'cancel', '0',
    'created_at', now, 'chain', '{"chain_id":"' .. c[1] .. '","turn":' .. turn .. '}')
  index_job(prefix, c[3], now, jid)
  redis.call('INCR', inflight_key(prefix, c[3]))
  emit_state(prefix, jid, 'queued', now, maxlen)
  if worker and worker ~= '' and affinity_ms then
    redis.call('HSET', job, 'entry', offer_to_worker(prefix, jid, worker, now, affinity_ms))
  else
    dispatch(prefix, jid, now)
  end
end

-- Start turn `turn` editing the frame of `source` (a JobResult JSON), or the chain's input image
-- when `source` is nil. Returns false when there is nothing to edit.
local function start_turn(prefix, ckey, turn, source, now, maxlen, worker, affinity_ms)
  local c = redis.call('HMGET', ckey, 't:' .. turn, 'carry', 'input')
  local input, latent = nil, nil
  if source then
    input, latent = frame_of(source)
    if c[2] ~= 'latent' then latent = nil end
  elseif c[3] and c[3] ~= '' then
    input = c[3]
  else
    return false
  end
  local spec = with_context(c[1], input, latent)
  if not spec then return false end
  create_turn_job(prefix, ckey, turn, spec, now, maxlen, worker, affinity_ms)
  return true
end

local function end_chain(ckey, status, now, retention_s)
  redis.call('HSET', ckey, 'status', status, 'finished_at', now)
  redis.call('EXPIRE', ckey, retention_s)
end

-- The result JSON of the chain's last good turn, or nil.
local function last_good_result(prefix, ckey)
  local good = tonumber(redis.call('HGET', ckey, 'last_good') or '0')
  if good == 0 then return nil end
  local jid = redis.call('HGET', ckey, 'j:' .. good)
  return redis.call('HGET', job_key(prefix, jid), 'result')
end

-- A chain turn's job just ended in `state`: create the next turn, or end the chain. Runs inside
-- the transition that ended the job, which is what makes "never twice" hold. `affinity_ms` is
-- given by commits only (the committing worker has the warm caches).
local function advance_chain(prefix, jid, state, now, retention_s, maxlen, affinity_ms)
  local job = job_key(prefix, jid)
  local v = redis.call('HMGET', job, 'chain', 'result', 'worker')
  if not v[1] or v[1] == '' then return end
  local ref = cjson.decode(v[1])
  local ckey = chain_key(prefix, ref.chain_id)
  local turn = tonumber(ref.turn)
  local c = redis.call('HMGET', ckey, 'status', 'turns', 'current', 'on_failure')
  -- A canceled chain, or a job that is not the chain's live turn (a forked prefix): nothing to do.
  if c[1] ~= 'running' or tonumber(c[3]) ~= turn then return end
  local source, worker = nil, nil
  if state == 'succeeded' then
    redis.call('HSET', ckey, 'last_good', turn)
    source, worker = v[2], v[3]
  elseif c[4] == 'continue' then
    source = last_good_result(prefix, ckey)
  else
    end_chain(ckey, 'failed', now, retention_s)
    return
  end
  if turn >= tonumber(c[2]) then
    if state == 'succeeded' then end_chain(ckey, 'succeeded', now, retention_s)
    else end_chain(ckey, 'failed', now, retention_s) end
    return
  end
  if not start_turn(prefix, ckey, turn + 1, source, now, maxlen, worker, affinity_ms) then
    end_chain(ckey, 'failed', now, retention_s)
  end
end

-- ---------------------------------------------------------------------------------------------
-- Job history (job_history.rs, docs/queue-protocol.md §Job history): `hist:<jid>` LIST of
-- HistoryEntry JSON, oldest first, capped, expiring with the job (set in `finish`).
local function history_key(prefix, jid) return prefix .. 'hist:' .. jid end
local HISTORY_MAXLEN = 100

-- Append one entry: `event`, `at`, then `fields` as name, raw JSON value pairs.
local function note_history(prefix, jid, event, at, fields)
  local parts = {'"event":"' .. event .. '"', '"at":' .. at}
  for i = 1, #(fields or {}), 2 do parts[#parts + 1] = '"' .. fields[i] .. '":' .. fields[i + 1] end
  local key = history_key(prefix, jid)
  redis.call('RPUSH', key, '{' .. table.concat(parts, ',') .. '}')
  redis.call('LTRIM', key, -HISTORY_MAXLEN, -1)
end

-- The fields every attempt entry carries: worker (a JSON string) and epoch.
local function attempt_fields(worker, epoch, ...)
  return {'worker', cjson.encode(worker or ''), 'epoch', epoch, ...}
end

-- Move a job to a terminal state: no lease, one less in flight, event, notification, retention
-- clock starts, and a chain turn's chain moves on. `set` / `del` are optional extra hash fields
-- to write / delete in the same commands (field, value, field, value...) / (field, field...).
-- `affinity_ms` (commits only): how long the next chain turn is offered to this job's worker only.
local function finish(prefix, jid, state, now, retention_s, maxlen, set, del, affinity_ms)
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
  redis.call('EXPIRE', history_key(prefix, jid), retention_s)
  advance_chain(prefix, jid, state, now, retention_s, maxlen, affinity_ms)
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

-- ---------------------------------------------------------------------------------------------
-- Admin actions on dead letters and queued jobs (docs/queue-protocol.md §Admin actions).
-- `actor` is who did it, as the coordinator names the caller (AuditEntry::actor).
local function audit(key, maxlen, now, action, target, actor)
  redis.call('XADD', key, 'MAXLEN', '~', maxlen, '*', 'at', now, 'action', action, 'target', target,
    'actor', actor)
end

-- Re-queue dead job `jid` (its hash fields `v`: state, dlq_entry, chain, tenant, spec, prio) as
-- new job `new_jid`; the dead job keeps its state and records the new id; its entry goes.
local function requeue_dead_letter(prefix, jid, v, new_jid, now, dlq, maxlen)
  local tenant = v[4]
  redis.call('HSET', job_key(prefix, new_jid), 'id', new_jid, 'tenant', tenant, 'state', 'queued',
    'spec', v[5], 'prio', v[6], 'progress', '0', 'attempts', '0', 'crashes', '0', 'epoch', '0',
    'cancel', '0', 'created_at', now)
  dispatch(prefix, new_jid, now)
  index_job(prefix, tenant, now, new_jid)
  redis.call('INCR', inflight_key(prefix, tenant))
  emit_state(prefix, new_jid, 'queued', now, maxlen)
  redis.call('XDEL', dlq, v[2])
  redis.call('HDEL', job_key(prefix, jid), 'dlq_entry')
  redis.call('HSET', job_key(prefix, jid), 'requeued_as', new_jid)
end

-- Cancel queued job `jid` as cancel.lua does; a chain turn's running chain is canceled with it
-- (as chain_cancel.lua does), so no later turn replaces it.
local function cancel_queued_job(prefix, jid, now, retention_s, maxlen)
  local job = job_key(prefix, jid)
  local chain = redis.call('HGET', job, 'chain')
  if chain then
    local ckey = chain_key(prefix, cjson.decode(chain).chain_id)
    if redis.call('HGET', ckey, 'status') == 'running' then end_chain(ckey, 'canceled', now, retention_s) end
  end
  redis.call('ZREM', prefix .. 'delay', jid)
  note_history(prefix, jid, 'canceled', now)
  finish(prefix, jid, 'canceled', now, retention_s, maxlen)
end
