-- Accept a job: idempotency check, bounded queue check, record + wait entry
-- in its (tier, owner) stream; a worker's dispatch moves it to `stream`.
-- KEYS: stream, record, queued counter, idempotency key (any name when unused)
-- ARGV: job_id, model, payload, now_ms, deadline_ms, max_queue (0 = no bound),
--       idempotency ttl seconds, use_idempotency (0/1), owner, kind, tier, weight
local stream, rec, queued, idem = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local job_id, model, payload, now, deadline = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local max_queue, idem_ttl, use_idem = tonumber(ARGV[6]), ARGV[7], ARGV[8] == '1'
local owner, kind, tier, weight = ARGV[9], ARGV[10], ARGV[11], ARGV[12]

if use_idem then
  local existing = redis.call('GET', idem)
  if existing then return {R.duplicate, existing} end
end
local depth = tonumber(redis.call('GET', queued) or '0')
if max_queue > 0 and depth >= max_queue then
  return {R.full, tostring(depth)}
end
local wid = wait_job(prefix_of(stream), tier, owner, weight, job_id, now,
  {'job_id', job_id, 'model', model, 'deadline', deadline, 'enqueued_at', now,
   'owner', owner, 'tier', tier, 'payload', payload})
redis.call('HSET', rec, 'status', S.queued, 'model', model, 'created_at', now,
  'deadline', deadline, 'attempt', 0, 'failures', 0, 'wait_id', wid, 'request', payload,
  'owner', owner, 'kind', kind, 'tier', tier)
redis.call('INCR', queued)
if use_idem then redis.call('SET', idem, job_id, 'EX', idem_ttl) end
return {R.ok, wid, tostring(depth + 1)}
