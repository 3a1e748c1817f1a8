-- fail: end an attempt with an error, applying the retry decision made in Rust
-- (policy::retry_decision), if the caller's epoch is current. A job whose cancel was requested
-- ends canceled whatever the decision. The failing worker's LoRA set is forgotten (its engine
-- may hold any set after a failure; LoRA affinity is only a hint). The job's history notes the
-- failure and what follows it; a terminal failure counts in its minute's throughput.
-- KEYS[1] job hash   KEYS[2] leases zset   KEYS[3] delay zset   KEYS[4] job event stream
-- ARGV[1] key prefix   ARGV[2] jid   ARGV[3] epoch   ARGV[4] decision (retry|failed|canceled)
-- ARGV[5] retry at (ms; with retry)   ARGV[6] error JSON   ARGV[7] now (ms)   ARGV[8] group
-- ARGV[9] retention (s)   ARGV[10] events maxlen
-- Returns {'retry', at} | {'finished', state} | {'not_found'} | {'stale'}
local prefix, jid, now = ARGV[1], ARGV[2], ARGV[7]
local verdict = check_lease(KEYS[1], ARGV[3])
if verdict ~= 'ok' then return {verdict} end
redis.call('HSET', KEYS[1], 'error', ARGV[6])
ack(prefix, jid, ARGV[8])
local worker = redis.call('HGET', KEYS[1], 'worker')
record_lora_set(prefix, worker, nil)
local canceled = redis.call('HGET', KEYS[1], 'cancel') == '1'
if ARGV[4] == 'retry' and not canceled then
  note_history(prefix, jid, 'failed', now, attempt_fields(worker, ARGV[3], 'error', ARGV[6],
    'retry_at', ARGV[5], 'outcome', '"queued"'))
  redis.call('ZREM', KEYS[2], jid)
  redis.call('HSET', KEYS[1], 'state', 'queued')
  redis.call('HDEL', KEYS[1], 'worker', 'lease_until')
  redis.call('HINCRBY', KEYS[1], 'epoch', 1)
  redis.call('ZADD', KEYS[3], ARGV[5], jid)
  emit_state(prefix, jid, 'queued', now, ARGV[10])
  return {'retry', ARGV[5]}
end
local state = ARGV[4]
if canceled or state == 'retry' then state = 'canceled' end
note_history(prefix, jid, 'failed', now, attempt_fields(worker, ARGV[3], 'error', ARGV[6],
  'retry_at', 'null', 'outcome', '"' .. state .. '"'))
if state ~= 'canceled' then record_throughput(prefix, now, 'failed') end
finish(prefix, jid, state, now, ARGV[9], ARGV[10])
return {'finished', state}
