-- GPU semaphore: extend the leases of the slots a live worker holds.
-- Upsert, not ZADD XX: a held member is a job that really runs on the GPU, so
-- after a Redis restart (or a stall past the lease) it is counted again even
-- if that briefly puts the set above its limit; acquirers then wait.
-- KEYS: semaphore zset
-- ARGV: lease_ms, member_1 .. member_N
-- Returns how many of the members had lapsed (were missing) before renewal.
local key = KEYS[1]
local lease = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
local lapsed = 0
for i = 2, #ARGV do
  if redis.call('ZADD', key, now + lease, ARGV[i]) == 1 then lapsed = lapsed + 1 end
end
redis.call('PEXPIRE', key, lease * 2)
return lapsed
