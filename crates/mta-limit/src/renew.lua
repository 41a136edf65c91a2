-- Renew leases: KEYS[i] the lease set of ARGV[i + 1], ARGV[1] the ttl in ms. A lease
-- Redis lost (restarted, or expired during an outage) is added again: the connection
-- exists, so it counts. Returns how many were renewed.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + ttl, ARGV[i + 1])
  redis.call('PEXPIRE', key, ttl * 2)
end
return #KEYS
