-- throughput_read: the per-minute throughput records of a span of minutes (throughput.rs).
-- Read-only.
-- KEYS[1] .. KEYS[n] the minutes' hashes tp:<minute>, oldest first
-- ARGV[1] unused (the scripts' header convention)
-- Returns {{field, value, ...} per key, in KEYS order}; an empty list for a minute with nothing
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('HGETALL', key) end
return out
