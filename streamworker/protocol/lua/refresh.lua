-- Renew the lease on the owner's running entries: reset their idle time
-- (XCLAIM to itself with JUSTID does not bump the delivery counter), but only
-- for entries this consumer still owns. Returns the ids it has lost.
-- KEYS: stream
-- ARGV: group, consumer, entry ids...
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local lost = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local p = redis.call('XPENDING', stream, group, id, id, 1, consumer)
  if #p == 1 then
    redis.call('XCLAIM', stream, group, consumer, 0, id, 'JUSTID')
  else
    lost[#lost + 1] = id
  end
end
return lost
