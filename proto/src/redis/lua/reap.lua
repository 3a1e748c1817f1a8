-- reap: re-queue jobs whose lease expired (a crash), dead-letter poison jobs, promote due
-- retries, and trim class-stream entries that every consumer is done with. Each lost lease is
-- noted in its job's history.
-- KEYS[1] leases zset   KEYS[2] delay zset   KEYS[3] dead-letter stream
-- KEYS[4] stream q:hi   KEYS[5] stream q:std   KEYS[6] stream q:bulk
-- ARGV[1] key prefix   ARGV[2] now (ms)   ARGV[3] group   ARGV[4] batch size
-- ARGV[5] crashes that make a job poison (policy::MAX_CRASHES)   ARGV[6] retention (s)
-- ARGV[7] events maxlen   ARGV[8] idle time (ms) after which a consumer with nothing pending is deleted
-- Returns {requeued jids, dead jids, canceled jids, promoted count, expired seen, due seen}
local prefix, now, group = ARGV[1], ARGV[2], ARGV[3]
local requeued, dead, canceled = {}, {}, {}

local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[4])
for _, jid in ipairs(expired) do
  local job = job_key(prefix, jid)
  local v = redis.call('HMGET', job, 'state', 'cancel')
  if v[1] == 'running' then
    ack(prefix, jid, group)
    -- The new epoch fences the presumed-dead worker at once.
    local epoch = redis.call('HINCRBY', job, 'epoch', 1) - 1
    local crashes = redis.call('HINCRBY', job, 'crashes', 1)
    local function lost(outcome)
      note_history(prefix, jid, 'lease_lost', now, attempt_fields(redis.call('HGET', job, 'worker'),
        epoch, 'outcome', '"' .. outcome .. '"'))
    end
    if v[2] == '1' then
      lost('canceled')
      finish(prefix, jid, 'canceled', now, ARGV[6], ARGV[7])
      table.insert(canceled, jid)
    elseif crashes >= tonumber(ARGV[5]) then
      lost('dead')
      record_throughput(prefix, now, 'failed')
      finish(prefix, jid, 'dead', now, ARGV[6], ARGV[7])
      local entry = redis.call('XADD', KEYS[3], '*', 'jid', jid, 'reason', 'crashed',
        'crashes', crashes, 'attempts', redis.call('HGET', job, 'attempts'), 'at', now)
      -- Where its dead letter is, for dead_requeue.lua / dead_dismiss.lua.
      redis.call('HSET', job, 'dlq_entry', entry)
      table.insert(dead, jid)
    else
      lost('queued')
      requeue(prefix, jid, now, ARGV[7])
      table.insert(requeued, jid)
    end
  else
    -- A lease without a running job is debris; drop it.
    redis.call('ZREM', KEYS[1], jid)
  end
end

local promoted = 0
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, ARGV[4])
for _, jid in ipairs(due) do
  redis.call('ZREM', KEYS[2], jid)
  if redis.call('HGET', job_key(prefix, jid), 'state') == 'queued' then
    dispatch(prefix, jid, now)
    promoted = promoted + 1
  end
end

-- Entries below both the oldest pending entry and the group's last-delivered id are acked by
-- everyone: trim them (never anything undelivered, so lag stays valid).
local function id_less(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end
for i = 4, 6 do
  local groups = redis.pcall('XINFO', 'GROUPS', KEYS[i])
  if type(groups) == 'table' and not groups.err then
    for _, g in ipairs(groups) do
      local info = {}
      for j = 1, #g, 2 do info[g[j]] = g[j + 1] end
      if info['name'] == group then
        local min_id = info['last-delivered-id']
        local pending = redis.call('XPENDING', KEYS[i], group)
        if pending[1] > 0 and id_less(pending[2], min_id) then min_id = pending[2] end
        redis.call('XTRIM', KEYS[i], 'MINID', min_id)
      end
    end
    -- Worker names churn (pods come and go); a consumer with nothing pending holds nothing, so
    -- long-idle ones are deleted. Idle time is the server's clock, but this is housekeeping
    -- only: no job's fate depends on it.
    local consumers = redis.pcall('XINFO', 'CONSUMERS', KEYS[i], group)
    if type(consumers) == 'table' and not consumers.err then
      for _, c in ipairs(consumers) do
        local info = {}
        for j = 1, #c, 2 do info[c[j]] = c[j + 1] end
        if info['pending'] == 0 and info['idle'] > tonumber(ARGV[8]) then
          redis.call('XGROUP', 'DELCONSUMER', KEYS[i], group, info['name'])
        end
      end
    end
  end
end

return {requeued, dead, canceled, promoted, #expired, #due}
