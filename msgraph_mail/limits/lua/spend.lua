-- KEYS: per budget, its ZSET and its total. ARGV: token, then per budget window_ms, limit,
-- amount. Returns {0} when spent, {1, i, wait_ms} when budget i is short, {2, i} when the
-- amount alone exceeds budget i. Spends on all budgets or on none.
-- Loaded after: common.lua
local now = now_ms()
local token = ARGV[1]
local n = #KEYS / 2
local totals = {}
local worst, worst_wait = 0, -1
for i = 1, n do
  local zkey, tkey = KEYS[2 * i - 1], KEYS[2 * i]
  local window = tonumber(ARGV[3 * i - 1])
  local limit = tonumber(ARGV[3 * i])
  local amount = tonumber(ARGV[3 * i + 1])
  local total = prune(zkey, tkey, now, window)
  totals[i] = total
  if amount > limit then return {2, i} end
  if total + amount > limit then
    local need = total + amount - limit
    local freed, wait, start = 0, nil, 0
    while wait == nil do
      local batch = redis.call('ZRANGE', zkey, start, start + 99, 'WITHSCORES')
      if #batch == 0 then break end
      for j = 1, #batch, 2 do
        freed = freed + amount_of(batch[j])
        if freed >= need then
          wait = tonumber(batch[j + 1]) + window - now
          break
        end
      end
      start = start + 100
    end
    if wait == nil then wait = window end
    if wait > worst_wait then worst, worst_wait = i, wait end
  end
end
if worst > 0 then return {1, worst, worst_wait} end
for i = 1, n do
  local zkey, tkey = KEYS[2 * i - 1], KEYS[2 * i]
  local window = tonumber(ARGV[3 * i - 1])
  redis.call('ZADD', zkey, now, token .. ':' .. ARGV[3 * i + 1])
  redis.call('SET', tkey, totals[i] + tonumber(ARGV[3 * i + 1]), 'PX', window)
  redis.call('PEXPIRE', zkey, window)
end
return {0}
