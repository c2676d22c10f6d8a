"""Every write of ``RedisStore``: one Lua script each, so what changes together lands together.

Each script runs as one atomic step in Redis, makes every check before its first
write (a refusal leaves nothing), and is run with EVALSHA (``Scripts`` in
``channels.redis.database`` loads them once and again on NOSCRIPT). Key names
follow ``channels.redis.keys``; the record scripts build them in Lua from the
prefix, with the helpers of ``_LIBRARY``.

Two rules hold for every script, so an unknown outcome (a dropped connection, a
timeout) can be settled by running the same call again:

- **A deadline.** ``ARGV[1]`` is the last millisecond, on the Redis server's
  clock, at which the script may still run; later it refuses (``LATE``) and
  changes nothing. A call given up as too slow therefore never lands later.
- **Running it twice changes nothing more.** A second run of the same call finds
  what the first wrote (``again``) and reports success; the append script finds
  the events it already stored and writes only the rest.

Refusals of a record script are error replies ``REFUSED <reason>``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

# The append script's status codes, with the channel's stored last id after each.
STORED = 0    # the batch is stored
UNKNOWN = 1   # no such channel
CLOSED = 2    # the channel has its terminal event, and it is not this batch's
CONFLICT = 3  # the stored ids do not continue where this batch starts
LATE = 4      # past the deadline: nothing written (the whole reply is {LATE})

# Error replies of the record scripts.
LATE_ERROR = "LATE"
REFUSED_ERROR = "REFUSED"


@dataclass(frozen=True)
class Script:
    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


# ``#!lua`` makes Redis refuse a script up front when it is out of memory (not halfway).
_SHEBANG = "#!lua\n"

_DEADLINE = """
local function past(deadline)
  local now = redis.call('TIME')
  return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) > tonumber(deadline)
end
"""

# ---- the append: a round of the group commit, each channel's batch of events -----------------
#
# KEYS: the running set, then for each channel its hash, stream and text (``Keys.appending``).
# ARGV: deadline, origin, now, then for each channel: its id, its first event's id, its number of
# events n, the joined contents of its delta events, then type and data of each of its events (ids
# first, first + 1, ...).
# Reply: {LATE} when past the deadline (nothing written), else a status and a last id per channel,
# in order: {status 1, last 1, status 2, last 2, ...}.
#
# Each channel's batch is checked and stored on its own: an unknown channel (UNKNOWN), or one
# already ended (CLOSED), refuses its batch only. Each event is stream entry ``<id>-0`` (fields
# t, d); the batch's delta contents are appended to the channel's text, so the joined answer is
# there when the terminal event arrives; a usage event sets the hash's usage, a terminal one its
# status and finished_at, and takes the channel off the running set. The stored last id is the
# stream's length (ids run 1..n, none removed): a round of deltas writes nothing to the hash,
# which kept a third of the append-only file's bytes per token when it held the last id. What
# a channel's batch stored is published on its wake channel (its hash's key, then ``:wake``) as
# "origin\nfirst id\ntype\ndata\ntype\ndata..." (orjson's compact JSON never holds a raw newline).
#
# A batch sent again after an unknown outcome may be stored in part or whole: when the entry at
# the stored last id (within the batch) is this batch's event, the ids up to it are this batch's
# (only a terminal event, the last one, ever comes from another process), so they count as
# stored and the rest is written; the contents of that rest are taken from its delta events.
# Otherwise the ids do not continue: CLOSED when the channel has ended, else CONFLICT.
#
# One script for the whole round, not one per channel: each command costs the process a reply
# to read (~10 us in redis-py) and Redis a script call (~2 us), which at a thousand streams was
# a fifth of the process's CPU per event. The process joins the contents and the published
# message is cut from ARGV as it stands: decoding each delta and building the message event by
# event here was half of the script's time.
APPEND = Script("append", _SHEBANG + _DEADLINE + """
local running, origin, now = KEYS[1], ARGV[2], ARGV[3]

local function append(k, a)
  local channel, stream, text = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local channel_id, first, count, contents = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), ARGV[a + 3]
  local events = a + 4
  local status = redis.call('HGET', channel, 'status')
  if not status then return 1, 0 end
  local last = redis.call('XLEN', stream)
  local stored = 0
  if last ~= first - 1 then
    local mismatch = status == 'running' and 3 or 2
    if last < first or last > first + count - 1 then return mismatch, last end
    local mine = events + 2 * (last - first)
    local entry = redis.call('XRANGE', stream, last .. '-0', last .. '-0')[1]
    if not entry or entry[2][2] ~= ARGV[mine] or entry[2][4] ~= ARGV[mine + 1] then return mismatch, last end
    stored = last - first + 1
    if stored == count then return 0, last end
  end
  if status ~= 'running' then return 2, last end
  local id = first + stored
  local from, to = events + 2 * stored, events + 2 * count - 1
  local rest = stored > 0 and {} or nil
  local fields = {}
  for i = from, to, 2 do
    local kind = ARGV[i]
    redis.call('XADD', stream, id .. '-0', 't', kind, 'd', ARGV[i + 1])
    if kind == 'delta' then
      if rest then
        local ok, decoded = pcall(cjson.decode, ARGV[i + 1])
        if ok and type(decoded.content) == 'string' then rest[#rest + 1] = decoded.content end
      end
    elseif kind == 'usage' then
      fields[#fields + 1] = 'usage'
      fields[#fields + 1] = ARGV[i + 1]
    elseif kind == 'done' or kind == 'error' or kind == 'cancelled' or kind == 'interrupted' then
      fields[#fields + 1] = 'status'
      fields[#fields + 1] = kind
      fields[#fields + 1] = 'finished_at'
      fields[#fields + 1] = now
      redis.call('SREM', running, channel_id)
    end
    id = id + 1
  end
  if rest then contents = table.concat(rest) end
  if contents ~= '' then redis.call('APPEND', text, contents) end
  if #fields > 0 then redis.call('HSET', channel, unpack(fields)) end
  redis.call('PUBLISH', channel .. ':wake',
             origin .. '\\n' .. (first + stored) .. '\\n' .. table.concat(ARGV, '\\n', from, to))
  return 0, id - 1
end

if past(ARGV[1]) then return {4} end
local reply = {}
local k, a = 2, 4
while a <= #ARGV do
  local status, last = append(k, a)
  reply[#reply + 1] = status
  reply[#reply + 1] = last
  k = k + 3
  a = a + 4 + 2 * tonumber(ARGV[a + 2])
end
return reply
""")

# ---- records: ARGV[1] the deadline, ARGV[2] a JSON object with the prefix ``p`` ------------------

_LIBRARY = _DEADLINE + """
local a = cjson.decode(ARGV[2])
local p = a.p
local function refused(reason) return redis.error_reply('REFUSED ' .. reason) end
local function channel_key(id) return p .. ':ch:{' .. id .. '}' end
local function user_key(id) return p .. ':user:{' .. id .. '}' end
local function token_key(hash) return p .. ':token:' .. hash end
local function conversations_key(user) return p .. ':user:{' .. user .. '}:conversations' end
local function subscriptions_key(user) return p .. ':user:{' .. user .. '}:push' end
local function conversation_key(id) return p .. ':conv:{' .. id .. '}' end
local function subscription_key(endpoint) return p .. ':push:' .. endpoint end
-- Moves a conversation to the top of its owner's list.
local function touch(conversation, owner, now)
  local touched = redis.call('INCR', p .. ':touched')
  redis.call('HSET', conversation_key(conversation), 'updated_at', now, 'touched', touched)
  redis.call('ZADD', conversations_key(owner), touched, conversation)
end
if past(ARGV[1]) then return redis.error_reply('LATE the deadline passed before the script ran') end
"""


def _records(name: str, body: str) -> Script:
    return Script(name, _SHEBANG + _LIBRARY + body)


# a: user, token_hash, now
CREATE_USER = _records("create_user", """
local user, token = user_key(a.user), token_key(a.token_hash)
local owner = redis.call('GET', token)
if owner == a.user and redis.call('HGET', user, 'created_at') == a.now then return 'again' end
if owner or redis.call('EXISTS', user) == 1 then return refused('the user id or token hash is taken') end
redis.call('SET', token, a.user)
redis.call('HSET', user, 'token_hash', a.token_hash, 'created_at', a.now)
return 'ok'
""")

# a: id, user, title, now
CREATE_CONVERSATION = _records("create_conversation", """
local conversation = conversation_key(a.id)
local found = redis.call('HMGET', conversation, 'user_id', 'created_at', 'title')
if found[1] then
  if found[1] == a.user and found[2] == a.now and found[3] == a.title then return 'again' end
  return refused('the conversation id is taken')
end
if redis.call('EXISTS', user_key(a.user)) == 0 then return refused('no such user') end
redis.call('HSET', conversation, 'id', a.id, 'user_id', a.user, 'title', a.title, 'created_at', a.now)
touch(a.id, a.user, a.now)
return 'ok'
""")

# a: conversation, channel, question and answer (the two messages as JSON), now
ADD_TURN = _records("add_turn", """
local conversation = conversation_key(a.conversation)
local owner = redis.call('HGET', conversation, 'user_id')
if not owner then return refused('no such conversation') end
local messages = conversation .. ':messages'
local last = redis.call('LINDEX', messages, -1)
if last and cjson.decode(last).channel == a.channel then return 'again' end
redis.call('RPUSH', messages, a.question, a.answer)
touch(a.conversation, owner, a.now)
return 'ok'
""")

# a: origin, now, channel, user, conversation, model, meta (its data JSON); with a submission's
# records also token_hash (a new user), title (a new conversation), question and answer (the turn).
# Refuses a taken channel id, a new user whose id or token hash is taken, an unknown user, a new
# conversation whose id is taken, an unknown conversation.
CREATE = _records("create", """
local channel = channel_key(a.channel)
local found = redis.call('HMGET', channel, 'user_id', 'conversation_id', 'created_at')
if found[1] then
  if found[1] == a.user and found[2] == a.conversation and found[3] == a.now then return 'again' end
  return refused('the channel id is taken')
end
local user = user_key(a.user)
if a.token_hash then
  if redis.call('EXISTS', token_key(a.token_hash), user) > 0 then
    return refused('the user id or token hash is taken')
  end
elseif redis.call('EXISTS', user) == 0 then
  return refused('no such user')
end
local conversation = conversation_key(a.conversation)
local owner = a.user
if a.title then
  if redis.call('EXISTS', conversation) == 1 then return refused('the conversation id is taken') end
else
  owner = redis.call('HGET', conversation, 'user_id')
  if not owner then return refused('no such conversation') end
end
if a.token_hash then
  redis.call('SET', token_key(a.token_hash), a.user)
  redis.call('HSET', user, 'token_hash', a.token_hash, 'created_at', a.now)
end
if a.title then
  redis.call('HSET', conversation, 'id', a.conversation, 'user_id', a.user, 'title', a.title, 'created_at', a.now)
end
redis.call('HSET', channel, 'user_id', a.user, 'conversation_id', a.conversation, 'model', a.model,
           'status', 'running', 'created_at', a.now)
redis.call('XADD', channel .. ':log', '1-0', 't', 'meta', 'd', a.meta)
redis.call('SADD', p .. ':running', a.channel)
redis.call('SADD', conversation .. ':channels', a.channel)
if a.question then
  redis.call('RPUSH', conversation .. ':messages', a.question, a.answer)
end
if a.title or a.question then touch(a.conversation, owner, a.now) end
redis.call('PUBLISH', channel .. ':wake', a.origin .. '\\n1\\nmeta\\n' .. a.meta)
return 'ok'
""")

# a: conversation. Deletes it with its messages, its channels with their events; returns the channels.
DELETE_CONVERSATION = _records("delete_conversation", """
local conversation = conversation_key(a.conversation)
local owner = redis.call('HGET', conversation, 'user_id')
local channels = redis.call('SMEMBERS', conversation .. ':channels')
for _, id in ipairs(channels) do
  local channel = channel_key(id)
  redis.call('DEL', channel, channel .. ':log', channel .. ':text')
  redis.call('SREM', p .. ':running', id)
end
redis.call('DEL', conversation, conversation .. ':messages', conversation .. ':channels')
if owner then redis.call('ZREM', conversations_key(owner), a.conversation) end
return channels
""")

# a: user, endpoint, p256dh, auth, now. The endpoint moves from whoever had it.
SAVE_SUBSCRIPTION = _records("save_subscription", """
if redis.call('EXISTS', user_key(a.user)) == 0 then return refused('no such user') end
local subscription = subscription_key(a.endpoint)
local owner = redis.call('HGET', subscription, 'user_id')
if owner and owner ~= a.user then redis.call('SREM', subscriptions_key(owner), a.endpoint) end
redis.call('HSET', subscription, 'user_id', a.user, 'endpoint', a.endpoint, 'p256dh', a.p256dh, 'auth', a.auth,
           'created_at', a.now)
redis.call('SADD', subscriptions_key(a.user), a.endpoint)
return 'ok'
""")

# a: endpoint, and user when only that user's subscription may go. 1 when one was deleted.
DELETE_SUBSCRIPTION = _records("delete_subscription", """
local subscription = subscription_key(a.endpoint)
local owner = redis.call('HGET', subscription, 'user_id')
if not owner or (a.user and a.user ~= owner) then return 0 end
redis.call('DEL', subscription)
redis.call('SREM', subscriptions_key(owner), a.endpoint)
return 1
""")

SCRIPTS = (APPEND, CREATE_USER, CREATE_CONVERSATION, ADD_TURN, CREATE, DELETE_CONVERSATION, SAVE_SUBSCRIPTION,
           DELETE_SUBSCRIPTION)
