-- complete: commit a result, if the caller's epoch is current; idempotent for the same epoch. A
-- chain turn's commit also creates the chain's next turn (prelude `finish` → `advance_chain`), in
-- this same script, so a turn can never be created twice. The committing worker's engine now
-- holds the job's LoRA set (none when the job had none): recorded for LoRA affinity. The job's
-- usage is counted here, once: a repeated commit answers 'already' before reaching it; so is
-- the job's history entry and its minute's throughput and latency.
-- KEYS[1] job hash   KEYS[2] leases zset   KEYS[3] job event stream
-- ARGV[1] key prefix   ARGV[2] jid   ARGV[3] epoch   ARGV[4] result JSON   ARGV[5] now (ms)
-- ARGV[6] group   ARGV[7] retention (s)   ARGV[8] events maxlen
-- ARGV[9] affinity delay (ms): the next chain turn is offered to this worker alone that long
-- ARGV[10] day of now (usage.rs day_of)   ARGV[11] the result's engine time (ms)
-- Returns {'committed'} | {'already'} | {'not_found'} | {'stale'}
local v = redis.call('HMGET', KEYS[1], 'state', 'epoch')
if not v[1] then return {'not_found'} end
if v[2] ~= ARGV[3] then return {'stale'} end
if v[1] == 'succeeded' then return {'already'} end
if v[1] ~= 'running' then return {'stale'} end
ack(ARGV[1], ARGV[2], ARGV[6])
local meta = redis.call('HMGET', KEYS[1], 'worker', 'loraset', 'tenant', 'spec', 'created_at')
record_lora_set(ARGV[1], meta[1], meta[2])
record_usage(ARGV[1], meta[3], ARGV[10], ARGV[11], meta[4])
record_throughput(ARGV[1], ARGV[5], 'succeeded', meta[5])
note_history(ARGV[1], ARGV[2], 'succeeded', ARGV[5],
  attempt_fields(meta[1], ARGV[3], 'engine_ms', ARGV[11]))
finish(ARGV[1], ARGV[2], 'succeeded', ARGV[5], ARGV[7], ARGV[8],
  {'result', ARGV[4], 'progress', '1'}, {'error'}, ARGV[9])
return {'committed'}
