-- worker_drain: an operator asks a live worker to drain (it reads the request at its next
-- registry heartbeat, worker_beat.lua); the action goes to the audit stream.
-- KEYS[1] workers zset   KEYS[2] the worker's drain request key   KEYS[3] audit stream
-- ARGV[1] worker id   ARGV[2] now (ms)   ARGV[3] request TTL (s)   ARGV[4] audit maxlen
-- ARGV[5] actor
-- Returns {'requested'} | {'not_found'}
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not expiry or tonumber(expiry) <= tonumber(ARGV[2]) then return {'not_found'} end
redis.call('SET', KEYS[2], '1', 'EX', ARGV[3])
audit(KEYS[3], ARGV[4], ARGV[2], 'drain_worker', ARGV[1], ARGV[5])
return {'requested'}
