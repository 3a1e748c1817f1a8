-- dead_dismiss: remove a dead letter from the dead-letter stream (the dead job's record stays
-- until its retention passes); audited.
-- KEYS[1] dead job hash   KEYS[2] dead-letter stream   KEYS[3] audit stream
-- ARGV[1] dead jid   ARGV[2] now (ms)   ARGV[3] audit maxlen   ARGV[4] actor
-- Returns {'dismissed'} | {'not_found'}
local v = redis.call('HMGET', KEYS[1], 'state', 'dlq_entry')
if v[1] ~= 'dead' or not v[2] then return {'not_found'} end
redis.call('XDEL', KEYS[2], v[2])
redis.call('HDEL', KEYS[1], 'dlq_entry')
audit(KEYS[3], ARGV[3], ARGV[2], 'dismiss_dead', ARGV[1], ARGV[4])
return {'dismissed'}
