-- Put a dead-lettered job back in the queue under its own id: it waits in
-- its tier and owner's stream again (the default tier once its record is gone).
-- KEYS: dead stream, stream, record, queued
-- ARGV: dead entry id, now_ms, deadline_ms, weight of owners with none recorded
local dead, stream, rec, queued = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local rows = redis.call('XRANGE', dead, ARGV[1], ARGV[1])
if #rows == 0 then return R.missing end
local f = rows[1][2]
local fields = {}
for i = 1, #f, 2 do fields[f[i]] = f[i + 1] end
local p = prefix_of(stream)
local kept = redis.call('HMGET', rec, 'owner', 'tier')
local owner, tier = kept[1] or '', kept[2] or TIERS[2]
local weight = redis.call('HGET', sk(p, 'weights'), owner) or ARGV[4]
local wid = wait_job(p, tier, owner, weight, fields['job_id'], ARGV[2],
  {'job_id', fields['job_id'], 'model', fields['model'], 'deadline', ARGV[3],
   'enqueued_at', ARGV[2], 'owner', owner, 'tier', tier, 'payload', fields['payload']})
redis.call('HSET', rec, 'status', S.queued, 'failures', 0, 'deadline', ARGV[3], 'wait_id', wid,
  'request', fields['payload'], 'model', fields['model'], 'owner', owner, 'tier', tier)
redis.call('HDEL', rec, 'finished_at', 'error', 'cancel', 'entry_id')
redis.call('HSETNX', rec, 'created_at', ARGV[2])
redis.call('HSETNX', rec, 'attempt', 0)
redis.call('PERSIST', rec)
redis.call('INCR', queued)
redis.call('XDEL', dead, ARGV[1])
return fields['job_id']
