-- Several limits in one call, all or nothing (isesctl's per-client limits): every rate of
-- KEYS[1..n] (GCRA as gcra.lua, but a new key may spend its burst at once) and, when
-- ARGV[2] > 0, one of ARGV[2] slots of the lease set KEYS[n + 1] (as lease.lua). Nothing
-- is counted unless every limit allows.
-- ARGV[1]: n; ARGV[2]: lease slots (0: no lease); ARGV[3]: lease ttl ms; ARGV[4]: lease
-- member; then per rate: interval µs, tolerance µs.
-- Returns {0, 0} (allowed, counted) or {i, µs to wait} for the first limit that refuses
-- (i = n + 1: the lease set is full).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = tonumber(ARGV[1])
local tats = {}
for i = 1, n do
  local interval = tonumber(ARGV[3 + 2 * i])
  local tolerance = tonumber(ARGV[4 + 2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local allowed_at = tat - tolerance
  if allowed_at > now then return {i, allowed_at - now} end
  tats[i] = tat + interval
end
local slots = tonumber(ARGV[2])
if slots > 0 then
  local now_ms = math.floor(now / 1000)
  local ttl = tonumber(ARGV[3])
  redis.call('ZREMRANGEBYSCORE', KEYS[n + 1], '-inf', now_ms)
  if redis.call('ZCARD', KEYS[n + 1]) >= slots then return {n + 1, 0} end
  redis.call('ZADD', KEYS[n + 1], now_ms + ttl, ARGV[4])
  redis.call('PEXPIRE', KEYS[n + 1], ttl * 2)
end
for i = 1, n do
  redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', math.ceil((tats[i] - now) / 1000) + 1000)
end
return {0, 0}
