-- Admit one request against an API key's per-minute budgets, atomically, so
-- every gateway process shares one limit. Two token buckets (requests and
-- tokens), each holding up to its per-minute limit and refilled continuously
-- at limit/60 s; a request needs 1 request and `cost` tokens, and takes from
-- both or from neither. The clock is Redis's (TIME), not the gateways'.
-- KEYS: requests bucket, tokens bucket (hashes: level, at)
-- ARGV: rpm (0 = unlimited), tpm (0 = unlimited), cost in tokens
-- Returns {allowed 0/1, requests left, ms until requests full,
--          tokens left, ms until tokens full, ms to wait before a retry}
local rpm, tpm, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function level(key, limit)
  if limit <= 0 then return 0 end
  local v = redis.call('HMGET', key, 'level', 'at')
  local lvl, at = tonumber(v[1]), tonumber(v[2])
  if not lvl or not at then return limit end
  return math.min(limit, lvl + math.max(0, now - at) * limit / 60000)
end

local req, tok = level(KEYS[1], rpm), level(KEYS[2], tpm)
local wait = 0
if rpm > 0 and req < 1 then wait = math.max(wait, (1 - req) * 60000 / rpm) end
if tpm > 0 and tok < cost then wait = math.max(wait, (cost - tok) * 60000 / tpm) end
local allowed = 0
if wait == 0 then
  allowed = 1
  if rpm > 0 then req = req - 1 end
  if tpm > 0 then tok = tok - cost end
end

local function store(key, limit, lvl)
  if limit <= 0 then return 0 end
  local full_ms = math.ceil((limit - lvl) * 60000 / limit)
  redis.call('HSET', key, 'level', string.format('%.6f', lvl), 'at', now)
  -- A full bucket is the same as no bucket: let it expire then.
  redis.call('PEXPIRE', key, full_ms + 1000)
  return full_ms
end

local req_full = store(KEYS[1], rpm, req)
local tok_full = store(KEYS[2], tpm, tok)
return {allowed, math.floor(req), req_full, math.floor(tok), tok_full, math.ceil(wait)}
