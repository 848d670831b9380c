-- The owner gives a job back: after an engine error (counts as a failure, and
-- dead-letters at max attempts) or at shutdown (does not count). The entry's
-- idle time is set so the next XAUTOCLAIM takes it after `delay_ms`.
-- KEYS: record, log, channel, stream, queued, dead
-- ARGV: attempt, entry_id, group, consumer, now_ms, ttl, max_attempts,
--       is_failure (0/1), error text, lease_ms, delay_ms
local rec, log, chan, stream, queued, dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local attempt, entry, group, consumer, now, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local max_attempts, is_failure, err = tonumber(ARGV[7]), ARGV[8] == '1', ARGV[9]
local lease_ms, delay_ms = tonumber(ARGV[10]), tonumber(ARGV[11])

local job = redis.call('HMGET', rec, 'status', 'attempt')
if job[1] ~= S.running or job[2] ~= attempt then return R.stale end
if is_failure then
  redis.call('HSET', rec, 'last_error', err)
  local failures = redis.call('HINCRBY', rec, 'failures', 1)
  if failures >= max_attempts then
    dead_letter(rec, log, chan, stream, group, dead, entry, now, ttl,
      'failed ' .. failures .. ' times (max attempts ' .. max_attempts .. '): ' .. err)
    return R.dead
  end
end
redis.call('HSET', rec, 'status', S.queued)
redis.call('INCR', queued)
local idle = lease_ms - delay_ms
if idle < 0 then idle = 0 end
redis.call('XCLAIM', stream, group, consumer, 0, entry, 'IDLE', idle, 'JUSTID')
redis.call('SPUBLISH', chan, cjson.encode({type = 'status', status = S.queued, attempt = tonumber(attempt)}))
return R.requeued
