-- settle(): dates a request's spends from now (the answer came), if they are still in their
-- windows; shared by settle.lua and release.lua.
-- KEYS[first..] are (budget ZSET, total) pairs, ARGV[first..] (member, window_ms) pairs.
local function settle(now, first_key, first_arg)
  for i = 0, (#KEYS - first_key + 1) / 2 - 1 do
    local zkey, tkey = KEYS[first_key + 2 * i], KEYS[first_key + 2 * i + 1]
    local member = ARGV[first_arg + 2 * i]
    local window = tonumber(ARGV[first_arg + 2 * i + 1])
    if redis.call('ZSCORE', zkey, member) then
      redis.call('ZADD', zkey, 'XX', now, member)
      redis.call('PEXPIRE', zkey, window)
      if redis.call('EXISTS', tkey) == 1 then redis.call('PEXPIRE', tkey, window) end
    end
  end
end
