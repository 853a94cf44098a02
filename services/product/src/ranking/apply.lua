-- Applies order changes to the sales ranking, each atomically and at most
-- once per order. One call carries a batch (a consumer's read, a rebuild's
-- page): one round trip and one script run for all of them.
--
-- For change i (1-based), in order:
-- KEYS[2i-1]  its day's per-order states (hash: order id -> state)
-- KEYS[2i]    its day's units sold (sorted set: product id -> units)
-- ARGV[5i-4]  order id
-- ARGV[5i-3]  change: C (confirmed), X (cancelled, or released), R (rejected)
-- ARGV[5i-2]  when both keys expire (unix seconds)
-- ARGV[5i-1]  source of the change (event id, or `rebuild`)
-- ARGV[5i]    the lines a confirmation counts: "<product>:<units>,..."
--
-- Returns one outcome per change: counted, subtracted, closed, unchanged.
--
-- State: "<change>|<source>|<lines counted>". The first change of an order
-- decides: C counts its lines; X or R first means the order never counts.
-- After C, only X does something: it takes back exactly the lines C counted.
-- Every other change finds a state and does nothing, so redelivered events,
-- events out of order and a rebuild running among them count each order
-- once at most.
for i = 1, #KEYS / 2 do
  local orders, units = KEYS[2 * i - 1], KEYS[2 * i]
  local base = 5 * (i - 1)
  local order, change, expires_at, source, lines =
    ARGV[base + 1], ARGV[base + 2], ARGV[base + 3], ARGV[base + 4], ARGV[base + 5]
  if change ~= 'C' and change ~= 'X' and change ~= 'R' then
    -- Before anything is written: a batch is applied whole or not at all.
    return redis.error_reply('unknown ranking change ' .. tostring(change))
  end
end

local outcomes = {}
for i = 1, #KEYS / 2 do
  local orders, units = KEYS[2 * i - 1], KEYS[2 * i]
  local base = 5 * (i - 1)
  local order, change, expires_at, source, lines =
    ARGV[base + 1], ARGV[base + 2], ARGV[base + 3], ARGV[base + 4], ARGV[base + 5]

  local state = redis.call('HGET', orders, order)
  local outcome = 'unchanged'
  if change == 'C' then
    if not state then
      for product, count in string.gmatch(lines, '(%d+):(%d+)') do
        redis.call('ZINCRBY', units, count, product)
      end
      outcome = 'counted'
    end
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
    end
  else -- R
    if not state then
      lines = ''
      outcome = 'closed'
    end
  end

  if outcome ~= 'unchanged' then
    redis.call('HSET', orders, order, change .. '|' .. source .. '|' .. lines)
    redis.call('EXPIREAT', orders, expires_at)
    redis.call('EXPIREAT', units, expires_at)
  end
  outcomes[i] = outcome
end
return outcomes
