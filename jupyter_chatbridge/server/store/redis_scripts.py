"""The Lua scripts of `RedisStore`: each write is one script, atomic on the Redis server.

Keys of a session (prefix `p`, id `i`): `p:s:i` (hash: created, settings, seq, token),
`p:s:i:events` (a stream, entry id `<seq>-0`, fields t = type, d = data),
`p:s:i:receipts` (sorted set: clientMsgId scored by its seq), `p:s:i:lease`
(the token of the process that drives the session's agent, if any).
`p:sessions` orders the sessions by creation (`p:order` counts them).
"""

from __future__ import annotations

# The seq a process proposes must be the session's next one, checked and taken in
# the same script as the XADD: so one seq means one event across every process. A
# seq already held with the same data is a retry after a failed commit (no change);
# anything else is a conflict, and refused. A non-empty fence must equal the
# session's lease token: a paused old owner cannot append after a take-over.
# KEYS: meta, events, lease. ARGV: seq, type, data, maxlen, fence.
APPEND = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local seq = tonumber(ARGV[1])
local last = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
if seq <= last then
  local held = redis.call('XRANGE', KEYS[2], seq .. '-0', seq .. '-0')
  if held[1] ~= nil and held[1][2][4] == ARGV[3] then return 0 end
  if held[1] == nil and seq < last then return 0 end
  return redis.error_reply('CHATBRIDGE_CONFLICT seq ' .. seq .. ' is taken (last ' .. last .. ')')
end
if seq ~= last + 1 then
  local why = ' is not next (last ' .. last .. ')'
  return redis.error_reply('CHATBRIDGE_CONFLICT seq ' .. seq .. why)
end
if ARGV[5] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[5] then
  return redis.error_reply('CHATBRIDGE_FENCED the session is driven by another process')
end
redis.call('HSET', KEYS[1], 'seq', seq)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], seq .. '-0', 't', ARGV[2], 'd', ARGV[3])
return 1
"""

# KEYS: meta, receipts. ARGV: clientMsgId, seq.
REMEMBER = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
"""

# A re-created id starts empty and goes last; the same create run again (a retry of a
# batch whose reply was lost) changes nothing, so it cannot wipe what followed it.
# KEYS: meta, events, receipts, sessions, order. ARGV: id, created, settings, token.
CREATE = """
if redis.call('HGET', KEYS[1], 'token') == ARGV[4] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('HSET', KEYS[1], 'created', ARGV[2], 'settings', ARGV[3], 'seq', 0, 'token', ARGV[4])
redis.call('ZADD', KEYS[4], redis.call('INCR', KEYS[5]), ARGV[1])
return 1
"""

# KEYS: meta, events, receipts, sessions. ARGV: id.
DELETE = """
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[4], ARGV[1])
return 1
"""

# Never the newest event: the session's last seq lives on in its stream as in its hash.
# KEYS: meta, events, receipts. ARGV: first event seq, first receipt seq.
TRIM = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local last = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local first = math.min(tonumber(ARGV[1]), last)
if first > 1 then redis.call('XTRIM', KEYS[2], 'MINID', first .. '-0') end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. ARGV[2])
return 1
"""
