-- worker_beat: record a worker's registry entry (workers.rs WorkerInfo) until its expiry, drop
-- index entries of workers whose records expired before now, and tell whether an operator asked
-- this worker to drain.
-- KEYS[1] workers zset   KEYS[2] the worker's info key   KEYS[3] the worker's drain request key
-- ARGV[1] worker id   ARGV[2] record JSON   ARGV[3] expiry (ms)   ARGV[4] TTL (ms)   ARGV[5] now (ms)
-- Returns 1 when a drain was requested, else 0
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[5])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[4])
return redis.call('EXISTS', KEYS[3])
