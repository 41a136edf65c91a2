-- GCRA step for one key (mta_types::rate::Gcra, in Redis, on Redis's clock).
-- KEYS[1]: the key's theoretical arrival time (µs). ARGV[1]: interval µs per event;
-- ARGV[2]: tolerance µs (interval × (burst − 1)). A new key starts with no burst credit
-- (its TAT is now + tolerance), as MemoryLimiter does. Returns 0 (allowed, counted) or
-- the µs to wait. Numbers stay below 2^53 (µs since 1970 ≈ 1.8e15): exact in Lua.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or (now + tolerance))
if tat < now then tat = now end
local allowed_at = tat - tolerance
if allowed_at > now then return allowed_at - now end
tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
return 0
