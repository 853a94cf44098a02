-- The best sellers over some days: the union of the days' units, best
-- first, through a scratch key that never outlives the call.
--
-- KEYS[1]     scratch key
-- KEYS[2..]   the days' sorted sets
-- ARGV[1]     how many to return
-- Returns product, units, product, units, ...
redis.call('ZUNIONSTORE', KEYS[1], #KEYS - 1, unpack(KEYS, 2))
local top = redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
redis.call('DEL', KEYS[1])
return top
