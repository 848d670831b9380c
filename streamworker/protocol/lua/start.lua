-- A worker took a stream entry (new, its own after a restart, or reclaimed).
-- Decide: run it (new attempt = fencing token), skip it, expire it, or
-- dead-letter it after too many failed runs.
-- KEYS: record, log, channel, stream, queued, dead
-- ARGV: entry_id, consumer, group, now_ms, max_attempts, ttl
local rec, log, chan, stream, queued, dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local entry, consumer, group, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local max_attempts, ttl = tonumber(ARGV[5]), ARGV[6]

local job = redis.call('HMGET', rec, 'status', 'cancel', 'deadline', 'failures', 'created_at')
local status = job[1]
if not status then
  -- Record gone (expired long ago): nothing to run, drop the entry.
  redis.call('XACK', stream, group, entry)
  redis.call('XDEL', stream, entry)
  return {R.skip, R.gone}
end
if TERMINAL[status] then
  redis.call('XACK', stream, group, entry)
  redis.call('XDEL', stream, entry)
  return {R.skip, status}
end
if job[2] == '1' then
  leave_queued(queued, status)
  finalize(rec, log, chan, stream, group, entry, S.cancelled, now, ttl, {},
    error_event(S.cancelled, CODE.cancelled))
  return {R.skip, S.cancelled}
end
if tonumber(job[3]) <= tonumber(now) then
  leave_queued(queued, status)
  finalize(rec, log, chan, stream, group, entry, S.expired, now, ttl, {},
    error_event(S.expired, CODE.timeout))
  return {R.skip, S.expired}
end
local failures = tonumber(job[4] or '0')
if status == S.running then
  -- Still `running` means the last owner died without a word: a stall.
  failures = redis.call('HINCRBY', rec, 'failures', 1)
  redis.call('HSET', rec, 'last_error', 'worker lost (lease expired)')
end
if failures >= max_attempts then
  leave_queued(queued, status)
  dead_letter(rec, log, chan, stream, group, dead, entry, now, ttl,
    'failed ' .. failures .. ' times (max attempts ' .. max_attempts .. ')')
  return {R.skip, R.dead}
end
leave_queued(queued, status)
local attempt = redis.call('HINCRBY', rec, 'attempt', 1)
redis.call('HSET', rec, 'status', S.running, 'worker', consumer, 'entry_id', entry, 'heartbeat_at', now)
redis.call('HSETNX', rec, 'started_at', now)
redis.call('SPUBLISH', chan, cjson.encode({type = 'status', status = S.running, attempt = attempt}))
-- The deadline and creation time too: the worker needs no separate read.
return {R.run, tostring(attempt), tostring(redis.call('LLEN', log)), job[3], job[5] or '0'}
