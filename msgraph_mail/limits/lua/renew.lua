-- KEYS[1]: the slots ZSET. ARGV: token, lease_ms. 1: renewed; 0: the lease was lost.
-- Loaded after: common.lua
local now = now_ms()
local key, token, lease = KEYS[1], ARGV[1], tonumber(ARGV[2])
local expiry = tonumber(redis.call('ZSCORE', key, token))
if expiry == nil then return 0 end
if expiry <= now then
  redis.call('ZREM', key, token)
  return 0
end
redis.call('ZADD', key, 'XX', now + lease, token)
local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', key, math.max(1, tonumber(last[2]) - now))
return 1
