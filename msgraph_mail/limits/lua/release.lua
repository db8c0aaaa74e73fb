-- KEYS: slots, grants, waiters, then the (ZSET, total) pairs to settle. ARGV: the holder's
-- token, the token of the lease to hand over, lease_ms, the token the holder waited under
-- (or ''), then the (member, window_ms) pairs to settle. Frees the slot, or hands it to a
-- waiter when more wait than grants are pending; dates the request's spends from now.
-- Loaded after: common.lua, settle_function.lua
local now = now_ms()
local slots, grants, waiters = KEYS[1], KEYS[2], KEYS[3]
local token, handed, lease = ARGV[1], ARGV[2], tonumber(ARGV[3])
if ARGV[4] ~= '' then redis.call('ZREM', waiters, ARGV[4]) end
redis.call('ZREMRANGEBYSCORE', waiters, '-inf', now)
local held = redis.call('ZREM', slots, token)
if held == 1 and redis.call('ZCARD', waiters) > redis.call('LLEN', grants) then
  redis.call('ZADD', slots, now + lease, handed)
  redis.call('RPUSH', grants, handed)
  redis.call('PEXPIRE', grants, lease)
  local last = redis.call('ZRANGE', slots, -1, -1, 'WITHSCORES')
  redis.call('PEXPIRE', slots, math.max(1, tonumber(last[2]) - now))
end
settle(now, 4, 5)
return 1
