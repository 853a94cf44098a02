-- Applies one order's change to the sales ranking, atomically, at most once.
--
-- KEYS[1]  the day's per-order states (hash: order id -> state)
-- KEYS[2]  the day's units sold (sorted set: product id -> units)
-- ARGV[1]  order id
-- ARGV[2]  change: C (confirmed), X (cancelled, or released), R (rejected)
-- ARGV[3]  when both keys expire (unix seconds)
-- ARGV[4]  source of the change (event id, or `rebuild`)
-- ARGV[5]  the lines a confirmation counts: "<product>:<units>,..."
--
-- State: "<change>|<source>|<lines counted>". The first change of an order
-- decides: C counts its lines; X or R first means the order never counts.
-- After C, only X does something: it takes back exactly the lines C counted.
-- Every other change finds a state and does nothing, so redelivered events,
-- events out of order and a rebuild running among them count each order
-- once at most.
local orders, units = KEYS[1], KEYS[2]
local order, change, expires_at, source, lines =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]

local state = redis.call('HGET', orders, order)
local outcome
if change == 'C' then
  if state then return 'unchanged' end
  for product, count in string.gmatch(lines, '(%d+):(%d+)') do
    redis.call('ZINCRBY', units, count, product)
  end
  outcome = 'counted'
elseif change == 'X' then
  if not state then
    lines = ''
    outcome = 'closed'
  elseif string.sub(state, 1, 1) == 'C' then
    lines = string.match(state, '^C|[^|]*|(.*)$') or ''
    for product, count in string.gmatch(lines, '(%d+):(%d+)') do
      local left = tonumber(redis.call('ZINCRBY', units, '-' .. count, product))
      if left <= 0 then redis.call('ZREM', units, product) end
    end
    lines = ''
    outcome = 'subtracted'
  else
    return 'unchanged'
  end
elseif change == 'R' then
  if state then return 'unchanged' end
  lines = ''
  outcome = 'closed'
else
  return redis.error_reply('unknown ranking change ' .. tostring(change))
end

redis.call('HSET', orders, order, change .. '|' .. source .. '|' .. lines)
redis.call('EXPIREAT', orders, expires_at)
redis.call('EXPIREAT', units, expires_at)
return outcome
