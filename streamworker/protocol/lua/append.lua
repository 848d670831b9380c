-- Log generated tokens and publish them, in one step: what a client can ever
-- have received is exactly what the log holds.
-- KEYS: record, log, channel
-- ARGV: attempt, first_seq, event (JSON for the channel), then one log entry per token
local rec, log, chan = KEYS[1], KEYS[2], KEYS[3]
local job = redis.call('HMGET', rec, 'status', 'attempt', 'cancel')
if job[1] ~= S.running or job[2] ~= ARGV[1] then return R.stale end
if job[3] == '1' then return R.cancel end
local logged = redis.call('LLEN', log)
-- A retry of a call whose reply was lost: it was applied already.
if logged == tonumber(ARGV[2]) + #ARGV - 3 then return R.ok end
if logged ~= tonumber(ARGV[2]) then return R.stale end
redis.call('RPUSH', log, unpack(ARGV, 4))
redis.call('SPUBLISH', chan, ARGV[3])
return R.ok
