-- A worker with free slots takes up to `count` waiting jobs: each moves from
-- its wait stream into the run stream, and XREADGROUP delivers them to this
-- consumer in the same step, so nothing is ever dispatched and unowned.
-- From here on a job's life (start, leases, XAUTOCLAIM, fencing) is the
-- run stream's, the same for every tier.
--
-- Which job: the tier whose oldest job has the earliest
-- (enqueue time + tier rank x aging); with no job older than `aging` that
-- is simply the highest non-empty tier. A tier that wins only by aging gives
-- its oldest job; otherwise deficit round robin over the tier's owners, in
-- jobs: an owner at the ring's head with credit >= 1 spends 1, else earns
-- its weight and goes to the tail.
-- KEYS: stream, queued, wake
-- ARGV: group, consumer, count, now_ms (0: Redis's clock), aging_ms (0: strict
--       tiers), ttl
local stream, queued, wake = KEYS[1], KEYS[2], KEYS[3]
local group, consumer = ARGV[1], ARGV[2]
local count, now, aging, ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
if now == 0 then
  -- Sent ahead behind a blocking pop: the caller's clock was read before the wait.
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local p = prefix_of(stream)

local function oldest(tier)
  local z = redis.call('ZRANGE', sk(p, 'age', tier), 0, 0, 'WITHSCORES')
  if #z == 0 then return nil end
  return z[1], tonumber(z[2])
end

-- The next (tier, owner, wait entry) to go, or nil when nothing waits.
local function pick()
  local best, best_score, best_job, first
  for rank, tier in ipairs(TIERS) do
    local job_id, t = oldest(tier)
    if job_id then
      first = first or tier
      local score = (rank - 1) * 1e15
      if aging > 0 then score = t + (rank - 1) * aging end
      if best == nil or score < best_score then best, best_score, best_job = tier, score, job_id end
    end
  end
  if best == nil then return nil end
  if best ~= first then
    -- Aged past a higher tier: its oldest job, whoever owns it.
    local f = redis.call('HMGET', sk(p, 'job', best_job), 'owner', 'wait_id')
    if f[2] then return best, f[1] or '', f[2], best_job end
    redis.call('ZREM', sk(p, 'age', best), best_job)  -- a stale index entry
    return false
  end
  local ring, credit = sk(p, 'ring', best), sk(p, 'deficit', best)
  -- Bounded: weights are >= 0.1 (auth.py), so every owner earns a job's
  -- credit within eleven turns of the ring (float sums fall just short).
  for _ = 1, 11 * (redis.call('LLEN', ring) + 1) do
    local owner = redis.call('LINDEX', ring, 0)
    if not owner then break end
    local have = tonumber(redis.call('HGET', credit, owner) or '0')
    if have >= 1 then
      local e = redis.call('XRANGE', sk(p, 'wait', best, owner), '-', '+', 'COUNT', 1)
      if #e == 0 then
        redis.call('LPOP', ring)
        redis.call('HDEL', credit, owner)
      else
        redis.call('HINCRBYFLOAT', credit, owner, -1)
        local job_id
        local f = e[1][2]
        for i = 1, #f, 2 do if f[i] == 'job_id' then job_id = f[i + 1] end end
        return best, owner, e[1][1], job_id
      end
    else
      local weight = tonumber(redis.call('HGET', sk(p, 'weights'), owner) or '1')
      redis.call('HINCRBYFLOAT', credit, owner, weight)
      redis.call('LMOVE', ring, ring, 'LEFT', 'RIGHT')
    end
  end
  if redis.call('LLEN', ring) > 0 then return false end  -- credit still accruing
  -- The index names a job but no owner is in the ring: put its owner back
  -- rather than strand the job; drop the index entry if it waits nowhere.
  local f = redis.call('HMGET', sk(p, 'job', best_job), 'owner', 'wait_id')
  if f[2] then
    redis.call('RPUSH', ring, f[1] or '')
    redis.call('HSET', credit, f[1] or '', 1)
  else
    redis.call('ZREM', sk(p, 'age', best), best_job)
  end
  return false
end

local moved, tries = 0, 0
while moved < count and tries < count + 100 do
  tries = tries + 1
  local tier, owner, wid, job_id = pick()
  if tier == nil then break end
  if tier then
    local w = sk(p, 'wait', tier, owner)
    local e = redis.call('XRANGE', w, wid, wid)
    unwait(p, tier, owner, wid, job_id)
    local rec = sk(p, 'job', job_id)
    local job = redis.call('HMGET', rec, 'status', 'deadline')
    if #e == 1 and job[1] == S.queued then
      if tonumber(job[2]) <= now then
        -- Its deadline passed while it waited: it ends here, taking no slot.
        leave_queued(queued, S.queued)
        finalize(rec, sk(p, 'log', job_id), sk(p, 'ch', job_id), '', '', '', S.expired, now, ttl,
          {}, error_event(S.expired, CODE.timeout))
      else
        local entry = redis.call('XADD', stream, '*', unpack(e[1][2]))
        redis.call('HSET', rec, 'entry_id', entry, 'dispatched_at', now)
        redis.call('HDEL', rec, 'wait_id')
        moved = moved + 1
      end
    end
  end
end
local waiting = 0
for _, tier in ipairs(TIERS) do waiting = waiting + redis.call('ZCARD', sk(p, 'age', tier)) end
if waiting == 0 then redis.call('DEL', wake) end
-- Also delivers an entry someone added to the run stream directly.
local got = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count, 'STREAMS', stream, '>')
if not got then return {} end
local out = {}
for _, e in ipairs(got[1][2]) do
  out[#out + 1] = e[1]
  local fields = {}
  for i = 1, #e[2], 2 do fields[e[2][i]] = e[2][i + 1] end
  out[#out + 1] = fields['job_id'] or ''
  out[#out + 1] = fields['payload'] or ''
  out[#out + 1] = fields['owner'] or ''
  out[#out + 1] = fields['tier'] or ''
  out[#out + 1] = fields['enqueued_at'] or '0'
end
return out
