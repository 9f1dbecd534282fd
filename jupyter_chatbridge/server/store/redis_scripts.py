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
# `notices` tells every process's relay that a session was created.
# KEYS: meta, events, receipts, sessions, order, notices. ARGV: id, created, settings, token.
CREATE = """
if redis.call('HGET', KEYS[1], 'token') == ARGV[4] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('HSET', KEYS[1], 'created', ARGV[2], 'settings', ARGV[3], 'seq', 0, 'token', ARGV[4])
redis.call('ZADD', KEYS[4], redis.call('INCR', KEYS[5]), ARGV[1])
redis.call('XADD', KEYS[6], 'MAXLEN', '~', 10000, '*', 'k', 'created', 'id', ARGV[1])
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

# -- many processes: Redis assigns the seq --------------------------------------------------
# With several server processes no process can know the next seq, so Redis assigns it
# (INCR-and-XADD in one script, Centrifugo's pattern) and the event's JSON is built
# around it: `head .. seq .. tail`. Every process shows an event only once its relay
# read it back from the stream, so whatever anyone was shown is in Redis.

# A process's ordered writes to a session (an agent's answer), in order, one or many
# events a call (the writer sends a burst's events together): `writer` and each event's
# `counter` make a retry after a lost reply a no-op instead of a second event.
# KEYS: meta, events, lease, writers.
# ARGV: maxlen, fence, writer, then head, tail, type, counter for each event.
# Returns the last seq written, -1 if every event was written before, 0 if no session.
APPEND_NEXT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[2] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[2] then
  return redis.error_reply('CHATBRIDGE_FENCED the session is driven by another process')
end
local done = tonumber(redis.call('HGET', KEYS[4], ARGV[3]) or '0')
local last = -1
for i = 4, #ARGV, 4 do
  local counter = tonumber(ARGV[i + 3])
  if counter > done then
    local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], seq .. '-0', 't', ARGV[i + 2],
      'd', ARGV[i] .. seq .. ARGV[i + 1])
    done = counter
    last = seq
  end
end
if last > 0 then
  redis.call('HSET', KEYS[4], ARGV[3], done)
  redis.call('EXPIRE', KEYS[4], 86400)
end
return last
"""

# A user message, once per clientMsgId across every process: the receipt check, the
# seq and the receipt are one atomic step, so two processes given the same id at once
# answer one 202 and one duplicate. Returns {seq, 1 if duplicate}; {0, 0} if no session.
# KEYS: meta, events, receipts. ARGV: clientMsgId, head, tail, maxlen, max receipts.
SEND = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0} end
local held = redis.call('ZSCORE', KEYS[3], ARGV[1])
if held then return {tonumber(held), 1} end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], seq .. '-0', 't', 'user_message',
  'd', ARGV[2] .. seq .. ARGV[3])
redis.call('ZADD', KEYS[3], seq, ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -(tonumber(ARGV[5]) + 1))
return {seq, 0}
"""

# The end of a session: its `session_ended` event stays readable for a while, so every
# process's relay shows it, while the session itself is gone at once.
# KEYS: meta, events, receipts, sessions, lease, driver. ARGV: id, head, tail, linger seconds.
END = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('XADD', KEYS[2], seq .. '-0', 't', 'session_ended', 'd', ARGV[2] .. seq .. ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('DEL', KEYS[1], KEYS[3], KEYS[5], KEYS[6])
redis.call('ZREM', KEYS[4], ARGV[1])
return seq
"""

# The lease on a session's agent run: renewed or released only by its holder.
# KEYS: lease. ARGV: token, milliseconds.
LEASE_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: lease. ARGV: token.
LEASE_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# A new driver; the previous one, if another connection, hears of it (its process's relay).
# KEYS: driver, notices. ARGV: connection id, session id.
DRIVE = """
local previous = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1])
if previous and previous ~= ARGV[1] then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', 10000, '*', 'k', 'detached', 'id', ARGV[2],
    'conn', previous)
end
return 1
"""
