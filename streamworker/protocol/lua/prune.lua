-- Forget consumers that are gone, but only once they own no pending entry:
-- XGROUP DELCONSUMER would orphan its entries otherwise (they are claimed
-- first, by XAUTOCLAIM, after their lease).
-- KEYS: stream
-- ARGV: group, consumer names...
local removed = {}
for i = 2, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[i])
  if #p == 0 then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[i])
    removed[#removed + 1] = ARGV[i]
  end
end
return removed
