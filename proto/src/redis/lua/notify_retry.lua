-- notify_retry: make a taken notification due again at a later time (delivery backoff).
-- KEYS[1] notify zset
-- ARGV[1] job id   ARGV[2] due time (ms)
-- Returns 1 when rescheduled, 0 when the notification no longer exists (acknowledged)
return redis.call('ZADD', KEYS[1], 'XX', 'CH', ARGV[2], ARGV[1])
