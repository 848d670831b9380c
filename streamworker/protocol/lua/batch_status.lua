-- A batch's status changes only from the statuses the caller expects, so a
-- cancel that lands while a runner is mid-step is never overwritten by it.
-- KEYS: the batch hash. ARGV: the expected statuses (comma-separated), then
-- field, value pairs to write. Returns 1 if written, 0 if the status was another.
local current = redis.call('HGET', KEYS[1], 'status')
if not current then
    return 0
end
for expected in string.gmatch(ARGV[1], '[^,]+') do
    if expected == current then
        redis.call('HSET', KEYS[1], unpack(ARGV, 2))
        return 1
    end
end
return 0
