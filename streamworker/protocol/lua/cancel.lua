-- Cancel a job: a queued one ends now (it leaves its wait stream, or its
-- run stream entry, if dispatched, is skipped when started); a
-- running one is flagged, and its worker stops at its next token.
-- KEYS: record, log, channel, queued
-- ARGV: now_ms, ttl, the status to end a queued job with (S.cancelled or S.expired)
local rec, log, chan, queued = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local status = redis.call('HGET', rec, 'status')
if not status then return R.missing end
if TERMINAL[status] then return status end
if status == S.queued then
  local w = redis.call('HMGET', rec, 'tier', 'owner', 'wait_id')
  if w[3] then
    unwait(prefix_of(rec), w[1], w[2] or '', w[3], string.match(rec, ':job:(.+)$'))
    redis.call('HDEL', rec, 'wait_id')
  end
  leave_queued(queued, status)
  local code = CODE.cancelled
  if ARGV[3] == S.expired then code = CODE.timeout end
  finalize(rec, log, chan, '', '', '', ARGV[3], ARGV[1], ARGV[2], {}, error_event(ARGV[3], code))
  return ARGV[3]
end
-- A running job's deadline is enforced by its worker, token by token.
if ARGV[3] == S.expired then return status end
redis.call('HSET', rec, 'cancel', '1')
return R.cancelling
