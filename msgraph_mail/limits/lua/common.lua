-- Shared by every script: Redis time in ms, and the sliding windows of the budgets.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- entries are 'token:amount' members scored by the time they were spent (ms)
local function amount_of(member)
  return tonumber(string.match(member, ':(%d+)$')) or 0
end

-- Drop the entries that left the window; return what is still spent. The running total
-- lives in tkey; when it is missing (evicted) it is counted again from the entries.
local function prune(zkey, tkey, now, window)
  local cutoff = now - window
  local total = tonumber(redis.call('GET', tkey))
  if total == nil then
    redis.call('ZREMRANGEBYSCORE', zkey, '-inf', cutoff)
    total = 0
    for _, member in ipairs(redis.call('ZRANGE', zkey, 0, -1)) do
      total = total + amount_of(member)
    end
  else
    local expired = redis.call('ZRANGEBYSCORE', zkey, '-inf', cutoff)
    if #expired > 0 then
      for _, member in ipairs(expired) do total = total - amount_of(member) end
      redis.call('ZREMRANGEBYSCORE', zkey, '-inf', cutoff)
    end
  end
  if redis.call('ZCARD', zkey) == 0 then
    redis.call('DEL', tkey)
    return 0
  end
  if total < 0 then total = 0 end
  redis.call('SET', tkey, total)
  local ttl = redis.call('PTTL', zkey)
  if ttl > 0 then redis.call('PEXPIRE', tkey, ttl) end
  return total
end
