-- A queued job's place in its model's queue: the undelivered stream entries
-- up to and including its own (1: next to start). -1 once it is not queued.
-- KEYS: stream, record
-- ARGV: group, limit (the count stops there)
local st = redis.call('HMGET', KEYS[2], 'status', 'entry_id')
if st[1] ~= S.queued or not st[2] then return -1 end
local last = '0-0'
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name, delivered
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] end
    if g[i] == 'last-delivered-id' then delivered = g[i + 1] end
  end
  if name == ARGV[1] then last = delivered end
end
return #redis.call('XRANGE', KEYS[1], '(' .. last, st[2], 'COUNT', tonumber(ARGV[2]))
