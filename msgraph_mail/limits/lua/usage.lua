-- KEYS: the slots ZSET, per budget its ZSET and total, the grants LIST. ARGV: per budget
-- window_ms.
-- Returns {in flight, spent on budget 1, ...}.
-- Loaded after: common.lua
local now = now_ms()
-- in flight: the live leases, less the grants no waiter has taken yet
local leases = redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
local result = {math.max(0, leases - redis.call('LLEN', KEYS[#KEYS]))}
for i = 1, (#KEYS - 2) / 2 do
  result[i + 1] = prune(KEYS[2 * i], KEYS[2 * i + 1], now, tonumber(ARGV[i]))
end
return result
