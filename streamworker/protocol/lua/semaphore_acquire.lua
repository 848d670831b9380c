-- GPU semaphore: take up to N free slots. The semaphore is a sorted set of
-- holders scored by lease expiry (ms, Redis's own clock, so hosts' clocks do
-- not matter): expired holders are dropped first, which is how a killed
-- worker's slots come back by themselves.
-- KEYS: semaphore zset
-- ARGV: limit, lease_ms, member_1 .. member_N (tokens to grant, in order)
-- Returns the granted members (a prefix of the ones asked for).
local key = KEYS[1]
local limit, lease = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
local free = limit - redis.call('ZCARD', key)
local granted = {}
for i = 3, #ARGV do
  if free <= 0 then break end
  redis.call('ZADD', key, now + lease, ARGV[i])
  granted[#granted + 1] = ARGV[i]
  free = free - 1
end
if #granted > 0 then redis.call('PEXPIRE', key, lease * 2) end
return granted
