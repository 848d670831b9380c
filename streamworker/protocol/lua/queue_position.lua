-- A queued job's place in its model's queue (1: next to start), -1 once it
-- is not queued. An estimate of the dispatch order with no new arrivals and
-- no aging: every job waiting in a higher tier, plus, in its own tier, the
-- jobs deficit round robin gives each backlogged owner while it gives this
-- owner as many as are ahead of and including this job (by their weights).
-- A dispatched job not yet started, or one handed back to the run stream,
-- is 1: it starts at the next free slot.
-- KEYS: stream, record
-- ARGV: group (unused), limit (the count stops there)
local st = redis.call('HMGET', KEYS[2], 'status', 'wait_id', 'tier', 'owner')
if st[1] ~= S.queued then return -1 end
if not st[2] then return 1 end
local p, limit = prefix_of(KEYS[1]), tonumber(ARGV[2])
local tier, owner = st[3], st[4] or ''
local n = 0
for _, t in ipairs(TIERS) do
  if t == tier then break end
  n = n + redis.call('ZCARD', sk(p, 'age', t))
end
local mine = #redis.call('XRANGE', sk(p, 'wait', tier, owner), '-', st[2], 'COUNT', limit)
local weights = sk(p, 'weights')
local my_weight = tonumber(redis.call('HGET', weights, owner) or '1')
for _, o in ipairs(redis.call('LRANGE', sk(p, 'ring', tier), 0, 999)) do
  if o == owner then
    n = n + mine
  else
    local share = math.ceil(mine * tonumber(redis.call('HGET', weights, o) or '1') / my_weight)
    n = n + math.min(redis.call('XLEN', sk(p, 'wait', tier, o)), share)
  end
  if n >= limit then return limit end
end
return n
