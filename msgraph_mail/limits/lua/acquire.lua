-- Slots are handed over, not fought for: a holder that releases while others wait passes its
-- slot on as a new lease (a grant, pushed to a list) that one waiter takes with BLPOP and
-- holds at once, without another round trip. Waiters register with a short deadline, which
-- they renew each time they try again, so a waiter that died is soon no longer served.
--
-- KEYS: slots ZSET (holder token -> lease expiry, ms), grants LIST, waiters ZSET (token ->
-- deadline). ARGV: token, limit, lease_ms, waiter_ms. Returns {1} when taken (a grant left
-- unclaimed first, else a free slot), else {0, ms until the first lease runs out} after
-- registering the caller as a waiter.
-- Loaded after: common.lua
local now = now_ms()
local slots, grants, waiters = KEYS[1], KEYS[2], KEYS[3]
local token, limit = ARGV[1], tonumber(ARGV[2])
local lease, waiting = tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
local function take()
  redis.call('ZADD', slots, now + lease, token)
  redis.call('ZREM', waiters, token)
  local last = redis.call('ZRANGE', slots, -1, -1, 'WITHSCORES')
  redis.call('PEXPIRE', slots, math.max(1, tonumber(last[2]) - now))
  return {1}
end
while true do
  local grant = redis.call('LPOP', grants)
  if not grant then break end
  if redis.call('ZSCORE', slots, grant) then
    redis.call('ZREM', slots, grant)
    return take()
  end
end
if redis.call('ZCARD', slots) < limit then
  return take()
end
redis.call('ZADD', waiters, now + waiting, token)
redis.call('PEXPIRE', waiters, waiting)
local first = redis.call('ZRANGE', slots, 0, 0, 'WITHSCORES')
return {0, tonumber(first[2]) - now}
