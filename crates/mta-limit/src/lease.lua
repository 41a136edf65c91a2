-- Take one of ARGV[1] slots of KEYS[1] (a sorted set: member = lease id, score = its end
-- in ms on Redis's clock), for ARGV[2] ms, as member ARGV[3]. Expired leases (a holder
-- that died or lost Redis) are dropped first. Returns 1 taken, 0 full.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[3])
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return 1
