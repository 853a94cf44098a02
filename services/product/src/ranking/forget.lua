-- Removes one consumer from a stream's group if, at this instant, it holds
-- no pending entry and has been idle long enough. Atomic: a consumer that
-- reads between a look and a delete would lose what it read (DELCONSUMER
-- drops a consumer's pending entries, which nobody could claim again).
--
-- KEYS[1]  the stream
-- ARGV[1]  the group
-- ARGV[2]  the consumer
-- ARGV[3]  least idle time, ms
--
-- Returns 1 when the consumer was removed, 0 otherwise.
local consumers = redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
for _, fields in ipairs(consumers) do
  local info = {}
  for i = 1, #fields, 2 do info[fields[i]] = fields[i + 1] end
  if info['name'] == ARGV[2] then
    if info['pending'] == 0 and info['idle'] >= tonumber(ARGV[3]) then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
      return 1
    end
    return 0
  end
end
return 0
