-- Scheduling helpers, prepended (after _common.lua) to the scripts that
-- put a job into a wait stream or take it out (protocol/scripts.py).
-- Their keys are derived from a model key's prefix `sw:{model}`, so they
-- carry the same hash tag and live in the same Redis Cluster slot as the
-- keys the script was given.

local function prefix_of(key) return string.match(key, '^(.-})') end
local function sk(p, ...) return table.concat({p, ...}, ':') end

-- Wait in the (tier, owner) stream; an owner whose stream was empty joins the
-- tail of the tier's ring with one round's credit (its weight), so its first
-- job goes at the ring's next turn, behind no more than one round of others.
local function wait_job(p, tier, owner, weight, job_id, now, fields)
  local w = sk(p, 'wait', tier, owner)
  local wid = redis.call('XADD', w, '*', unpack(fields))
  redis.call('ZADD', sk(p, 'age', tier), now, job_id)
  if redis.call('XLEN', w) == 1 then
    redis.call('LREM', sk(p, 'ring', tier), 0, owner)
    redis.call('RPUSH', sk(p, 'ring', tier), owner)
    redis.call('HSET', sk(p, 'deficit', tier), owner, weight)
  end
  redis.call('HSET', sk(p, 'weights'), owner, weight)
  -- One token per job for a blocked worker; bounded, and dropped by
  -- dispatch once nothing waits, so tokens never pile up while idle.
  redis.call('LPUSH', sk(p, 'wake'), '1')
  redis.call('LTRIM', sk(p, 'wake'), 0, 1023)
  return wid
end

-- Leave the wait stream and the tier's age index; an owner whose stream
-- empties leaves the ring (and forgets its credit).
local function unwait(p, tier, owner, wid, job_id)
  local w = sk(p, 'wait', tier, owner)
  redis.call('XDEL', w, wid)
  redis.call('ZREM', sk(p, 'age', tier), job_id)
  if redis.call('XLEN', w) == 0 then
    redis.call('DEL', w)
    redis.call('LREM', sk(p, 'ring', tier), 0, owner)
    redis.call('HDEL', sk(p, 'deficit', tier), owner)
  end
end
