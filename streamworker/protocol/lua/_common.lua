-- Shared helpers, prepended to every script by protocol/scripts.py after the
-- vocabulary tables S (statuses), R (replies), CODE and MESSAGE (end codes)
-- and TERMINAL, which are generated from protocol/outcomes.py.
-- Every state change of a job goes through one of these scripts, so each is
-- atomic; the `attempt` field is the fencing token that refuses stale writers.

local function hset_pairs(key, flat)
  if #flat > 0 then redis.call('HSET', key, unpack(flat)) end
end

-- Leave `queued` (a job record counts in the queued counter only while queued).
local function leave_queued(queued_key, status)
  if status == S.queued then
    local n = redis.call('DECR', queued_key)
    if n < 0 then redis.call('SET', queued_key, 0) end
  end
end

-- Mark a job terminal, tell its listeners, and drop its stream entry (XACK
-- first: only acknowledged entries are ever deleted).
local function finalize(rec, log, chan, stream, group, entry, status, now, ttl, fields, event)
  local flat = {'status', status, 'finished_at', now}
  for i = 1, #fields do flat[#flat + 1] = fields[i] end
  redis.call('HSET', rec, unpack(flat))
  redis.call('EXPIRE', rec, ttl)
  redis.call('EXPIRE', log, ttl)
  if entry and entry ~= '' then
    redis.call('XACK', stream, group, entry)
    redis.call('XDEL', stream, entry)
  end
  redis.call('SPUBLISH', chan, event)
end

local function error_event(status, code, message)
  return cjson.encode({type = 'end', status = status, code = code, message = message or MESSAGE[code]})
end

-- Copy a job to the dead-letter stream and fail it.
local function dead_letter(rec, log, chan, stream, group, dead, entry, now, ttl, reason)
  local job = redis.call('HMGET', rec, 'model', 'request', 'attempt', 'last_error')
  local job_id = string.match(rec, ':job:(.+)$')
  redis.call('XADD', dead, 'MAXLEN', '~', 10000, '*', 'job_id', job_id, 'model', job[1] or '',
    'payload', job[2] or '', 'attempts', job[3] or '0', 'reason', reason,
    'last_error', job[4] or '', 'failed_at', now)
  finalize(rec, log, chan, stream, group, entry, S.failed, now, ttl, {'error', reason},
    error_event(S.failed, CODE.job_failed, reason))
end
