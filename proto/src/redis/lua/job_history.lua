-- job_history: a job's record and its history (docs/queue-protocol.md §Job history), read in one
-- step so both show the same moment. Read-only.
-- KEYS[1] job hash   KEYS[2] history list hist:<jid>
-- ARGV[1] most entries (the list is capped at HISTORY_MAXLEN anyway)
-- Returns {job hash as HGETALL, {entry JSON...} oldest first}; the hash is empty when unknown
return {redis.call('HGETALL', KEYS[1]), redis.call('LRANGE', KEYS[2], -tonumber(ARGV[1]), -1)}
