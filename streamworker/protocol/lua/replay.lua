-- Put a dead-lettered job back in the queue under its own id.
-- KEYS: dead stream, stream, record, queued
-- ARGV: dead entry id, now_ms, deadline_ms
local dead, stream, rec, queued = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local rows = redis.call('XRANGE', dead, ARGV[1], ARGV[1])
if #rows == 0 then return R.missing end
local f = rows[1][2]
local fields = {}
for i = 1, #f, 2 do fields[f[i]] = f[i + 1] end
local entry = redis.call('XADD', stream, '*', 'job_id', fields['job_id'], 'model', fields['model'],
  'deadline', ARGV[3], 'enqueued_at', ARGV[2], 'payload', fields['payload'])
redis.call('HSET', rec, 'status', S.queued, 'failures', 0, 'deadline', ARGV[3], 'entry_id', entry,
  'request', fields['payload'], 'model', fields['model'])
redis.call('HDEL', rec, 'finished_at', 'error', 'cancel')
redis.call('HSETNX', rec, 'created_at', ARGV[2])
redis.call('HSETNX', rec, 'attempt', 0)
redis.call('PERSIST', rec)
redis.call('INCR', queued)
redis.call('XDEL', dead, ARGV[1])
return fields['job_id']
