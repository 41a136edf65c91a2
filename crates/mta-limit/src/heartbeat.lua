-- A node's heartbeat: KEYS[1] the summaries hash, KEYS[2] the last-seen sorted set;
-- ARGV[1] the node, ARGV[2] its summary. The time is Redis's, one clock for the fleet.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[1])
return now
