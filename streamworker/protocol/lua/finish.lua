-- The owner ends its attempt: completed, cancelled or expired (fenced).
-- KEYS: record, log, channel, stream
-- ARGV: attempt, entry_id, group, status, now_ms, ttl, event, then field/value pairs
local rec, log, chan, stream = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local job = redis.call('HMGET', rec, 'status', 'attempt')
if job[1] ~= S.running or job[2] ~= ARGV[1] then return 0 end
local fields = {}
for i = 8, #ARGV do fields[#fields + 1] = ARGV[i] end
finalize(rec, log, chan, stream, ARGV[3], ARGV[2], ARGV[4], ARGV[5], ARGV[6], fields, ARGV[7])
return 1
