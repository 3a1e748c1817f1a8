-- notify_take: hand out due notifications of finished jobs under a lease (coordinators' notifier).
-- KEYS[1] notify zset (jid -> due ms)   KEYS[2] notify attempts hash (jid -> times taken)
-- ARGV[1] key prefix   ARGV[2] now (ms)   ARGV[3] lease end (ms): taken entries are due again then
-- ARGV[4] most entries to take
-- Returns {{jid, attempt, state, created_at, started_at or '', finished_at or '', webhook_url or '',
--   tenant}, ...}
-- Entries whose job hash is gone (past retention) are dropped, not returned.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[4]))
local out = {}
for _, jid in ipairs(due) do
  local v = redis.call('HMGET', job_key(ARGV[1], jid), 'state', 'created_at', 'started_at',
    'finished_at', 'spec', 'tenant')
  if not v[1] then
    redis.call('ZREM', KEYS[1], jid)
    redis.call('HDEL', KEYS[2], jid)
  else
    local attempt = redis.call('HINCRBY', KEYS[2], jid, 1)
    redis.call('ZADD', KEYS[1], ARGV[3], jid)
    local hook = ''
    local ok, spec = pcall(cjson.decode, v[5] or '')
    if ok and type(spec) == 'table' and type(spec.webhook_url) == 'string' then
      hook = spec.webhook_url
    end
    out[#out + 1] = {jid, attempt, v[1], v[2], v[3] or '', v[4] or '', hook, v[6] or ''}
  end
end
return out
