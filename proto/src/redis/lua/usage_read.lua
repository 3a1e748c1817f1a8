-- usage_read: the usage counters of days from..to (inclusive; usage.rs MAX_USAGE_DAYS at most).
-- KEYS[1] the usage hash of day `from` (names the slot; the others share its hash tag)
-- ARGV[1] key prefix   ARGV[2] from (day)   ARGV[3] to (day)
-- Returns {day, field, value, day, field, value, ...} for every field of every day present
local out = {}
for day = tonumber(ARGV[2]), tonumber(ARGV[3]) do
  local h = redis.call('HGETALL', usage_key(ARGV[1], day))
  for i = 1, #h, 2 do
    out[#out + 1] = tostring(day)
    out[#out + 1] = h[i]
    out[#out + 1] = h[i + 1]
  end
end
return out
