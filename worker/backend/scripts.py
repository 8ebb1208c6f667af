"""The Lua scripts that carry every job-state change, each one atomic and one round trip.

They keep arq's data model (job record at `arq:job:<id>`, the queue sorted set scored by start
time in ms, `arq:in-progress:<id>`, `arq:retry:<id>`, `arq:result:<id>`), so arq's `Job` API
reads our jobs. Two additions, both documented in the README: a wake key (a sorted set with
one member) that enqueues touch so an idle worker blocked on BZPOPMIN starts at once, and
claimed jobs get their queue score moved to the end of their in-progress lock, so a scan of
due jobs never sees running ones and a job whose worker died becomes due exactly when its
lock expires. Key prefixes travel in ARGV so one call can touch many jobs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

__all__ = [
    "ACQUIRE",
    "CANCEL",
    "CLAIM",
    "ENQUEUE",
    "ENQUEUE_MANY",
    "EXTEND",
    "FINISH",
    "INSPECT",
    "LIST_ACK",
    "LIST_CLAIM",
    "LIST_PUSH",
    "LIST_RETURN",
    "PAGE",
    "PRESENCE",
    "RELEASE",
    "REPAIR_WAKE",
    "RESUME",
    "WITHDRAW",
    "Script",
]


# Touches the wake key. A wake key of the wrong type (written by someone else) must not fail
# the enqueue after the job is queued: it is replaced. No extra command when all is well.
_WAKE = """
local function WAKE(key)
  local reply = redis.pcall('ZADD', key, 0, 'w')
  if type(reply) == 'table' and reply.err then
    redis.call('DEL', key)
    redis.call('ZADD', key, 0, 'w')
  end
end
"""


@dataclass(frozen=True)
class Script:
    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        if "WAKE(" in self.source:
            object.__setattr__(self, "source", _WAKE + self.source)
        sha = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()
        object.__setattr__(self, "sha", sha)


# KEYS: job key, result key, queue, wake; ARGV: job record, expiry ms, score, job id.
# Returns 1 when queued, 0 when a job or result with this id already exists (deduplication).
ENQUEUE = Script(
    "enqueue",
    """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('PSETEX', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
WAKE(KEYS[4])
return 1
""",
)

# Many jobs in one call: one EXISTS and one PSETEX each, then a single ZADD for all of them.
# KEYS: queue, wake; ARGV: job prefix, result prefix, now ms, extra expiry ms, then per job:
# id, record, score. Returns one 1 (queued) or 0 (duplicate) per job, in order; an id repeated
# within the call is a duplicate the second time.
ENQUEUE_MANY = Script(
    "enqueue_many",
    """
local now, extra = tonumber(ARGV[3]), tonumber(ARGV[4])
local out, zargs = {}, {}
for i = 5, #ARGV, 3 do
  local id, score = ARGV[i], ARGV[i + 2]
  local jk = ARGV[1] .. id
  if redis.call('EXISTS', jk, ARGV[2] .. id) == 0 then
    redis.call('PSETEX', jk, tonumber(score) - now + extra, ARGV[i + 1])
    zargs[#zargs + 1] = score
    zargs[#zargs + 1] = id
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
if #zargs > 0 then
  redis.call('ZADD', KEYS[1], unpack(zargs))
  WAKE(KEYS[2])
end
return out
""",
)

# Claims up to `limit` due jobs for one worker from its queues, visited in the order given. For
# each job: take the in-progress lock (holding the worker's token), count the claim in the
# retry key, and move its score to the lock's expiry. A job locked by someone else is looked at
# again when that lock expires. Entries no producer of ours writes (an infinite score, an id
# outside the job-id rule: too long, or bytes other than letters, digits and _ . : @ / + = -)
# are quarantined: removed with their keys and kept, raw, in a capped list, and returned so the
# worker dead-letters them; the rest of the batch runs. A paused queue is skipped. A queue may
# have a cap of its own (what this worker may still run of it) and a global cap (a sorted set of
# the queue's running jobs across workers, scored by lock expiry, so a dead worker's entries
# lapse). Optionally writes the health key (arq's format plus its queue's length).
# KEYS: health key, then per queue: queue, quarantine list, paused flag, running set; last, the
# queue the health key belongs to.
# ARGV: now ms, lock ms, limit, token, job prefix, lock prefix, retry prefix, health text
# ('' = skip), health ttl, ended prefix, max id length, then per queue: its cap (-1 = none),
# its global cap (0 = none).
# Returns {more, next_due, states, n poison, then queue index, id, score per poison entry, then
# queue index, id, score, record or nil, claims, ended per claimed job}. `more` is 1 when more
# jobs may be due than the limit let us take, `next_due` the earliest score not yet due in an
# active queue ('' when none), `states` one character per queue: 'p' paused, 'c' due jobs left
# behind by a cap, '-' otherwise. `claims` counts this claim; `ended` counts the attempts that
# ended in a retry, so claims - 1 - ended were interrupted (a worker died or stopped mid-run).
CLAIM = Script(
    "claim",
    """
local now, remaining = tonumber(ARGV[1]), tonumber(ARGV[3])
local max_id = tonumber(ARGV[11])
local locked_until = now + tonumber(ARGV[2])
local nq = (#KEYS - 2) / 4
local next_due, more, states = nil, 0, {}
local poison, claimed = {}, {}
for q = 1, nq do
  local queue, running = KEYS[4 * q - 2], KEYS[4 * q + 1]
  local cap, global = tonumber(ARGV[10 + 2 * q]), tonumber(ARGV[11 + 2 * q])
  local state = '-'
  if redis.call('EXISTS', KEYS[4 * q]) == 1 then
    state = 'p'
  else
    local limit, by_cap = remaining, false
    if cap >= 0 and cap < limit then limit, by_cap = cap, true end
    if global > 0 then
      redis.call('ZREMRANGEBYSCORE', running, '-inf', now)
      local room = global - redis.call('ZCARD', running)
      if room < limit then limit, by_cap = math.max(room, 0), true end
    end
    local entries = redis.call('ZRANGEBYSCORE', queue, '-inf', '+inf', 'WITHSCORES', 'LIMIT', 0, limit + 1)
    local taken, bump, poisoned = 0, {}, {}
    for i = 1, #entries, 2 do
      local id, score = entries[i], entries[i + 1]
      local s = tonumber(score)
      if s == math.huge or s == -math.huge or #id > max_id or string.find(id, '[^%w_%.:@/%+=%-]') then
        poisoned[#poisoned + 1] = id
        poison[#poison + 1] = q
        poison[#poison + 1] = id
        poison[#poison + 1] = score
        redis.call('RPUSH', KEYS[4 * q - 1], string.sub(id, 1, 1024) .. '\\n' .. score)
      else
        if s > now then
          if next_due == nil or s < next_due then next_due = s end
          break
        end
        if taken == limit then
          if by_cap then state = 'c' else more = 1 end
          break
        end
        local lock = ARGV[6] .. id
        if redis.call('SET', lock, ARGV[4], 'NX', 'PX', ARGV[2]) then
          taken = taken + 1
          claimed[#claimed + 1] = q
          claimed[#claimed + 1] = id
          claimed[#claimed + 1] = score
          bump[#bump + 1] = locked_until
          if global > 0 then redis.call('ZADD', running, locked_until, id) end
        else
          -- Still locked (its worker is late extending it, or died a moment ago): due again
          -- when the lock ends, and this worker looks again then.
          local ttl = redis.call('PTTL', lock)
          if ttl < 100 then ttl = 100 end
          bump[#bump + 1] = now + ttl
          if next_due == nil or now + ttl < next_due then next_due = now + ttl end
        end
        bump[#bump + 1] = id
      end
      if i + 1 == #entries and #entries > 2 * limit then
        if by_cap then state = 'c' else more = 1 end
      end
    end
    if #poisoned > 0 then
      local dels = {}
      for _, id in ipairs(poisoned) do
        dels[#dels + 1] = ARGV[5] .. id
        dels[#dels + 1] = ARGV[6] .. id
        dels[#dels + 1] = ARGV[7] .. id
        dels[#dels + 1] = ARGV[10] .. id
      end
      redis.call('ZREM', queue, unpack(poisoned))
      redis.call('DEL', unpack(dels))
      redis.call('LTRIM', KEYS[4 * q - 1], -1000, -1)
    end
    if #bump > 0 then redis.call('ZADD', queue, 'XX', unpack(bump)) end
    remaining = remaining - taken
  end
  states[q] = state
end
local out = {more, next_due and string.format('%d', next_due) or '', table.concat(states), #poison / 3}
for j = 1, #poison do out[#out + 1] = poison[j] end
local n = #claimed / 3
if n > 0 then
  local keys = {}
  for j = 1, n do
    local id = claimed[3 * j - 1]
    keys[j] = ARGV[5] .. id
    keys[n + j] = ARGV[7] .. id
    keys[2 * n + j] = ARGV[10] .. id
  end
  local vals = redis.call('MGET', unpack(keys))
  local tries = {}
  for j = 1, n do
    local claims = (tonumber(vals[n + j]) or 0) + 1
    tries[#tries + 1] = keys[n + j]
    tries[#tries + 1] = claims
    out[#out + 1] = claimed[3 * j - 2]
    out[#out + 1] = claimed[3 * j - 1]
    out[#out + 1] = claimed[3 * j]
    out[#out + 1] = vals[j]
    out[#out + 1] = claims
    out[#out + 1] = tonumber(vals[2 * n + j]) or 0
  end
  redis.call('MSET', unpack(tries))
end
if ARGV[8] ~= '' then
  redis.call('PSETEX', KEYS[1], ARGV[9], ARGV[8] .. ' queued=' .. redis.call('ZCARD', KEYS[#KEYS]))
end
return out
""",
)

# Records a batch of finished attempts, of one or several queues. KEYS: per queue: queue, wake,
# running set (see CLAIM). ARGV: result ttl ms (0 = keep no result), job prefix, lock prefix,
# retry prefix, result prefix, ended prefix, number of queues, then per queue a flag (1: the
# queue has a cap, so a finished job frees a slot: drop it from the running set and wake a
# worker), then per job: op, queue index, id, value.
# op 'f' (finished): value is arq's result record; the result is kept and the job removed.
# op 'r' (run again after a failed try): value is the new score; the lock is dropped, the try
# counted as ended, a worker woken.
# op 'c' (cancelled at shutdown): like 'r', but the try does not count as ended: it was
# interrupted.
# op 'd' (deferred unrun, by a rate limit): like 'c', and the claim is taken back, so it counts
# as neither a try nor an interruption.
# Returns the number of entries applied. Applying a batch twice is harmless, but for the ended
# count of a retry, which the next claim reads as at most one try more.
FINISH = Script(
    "finish",
    """
local ttl, nq = tonumber(ARGV[1]), tonumber(ARGV[7])
local first = 8 + nq
local dels, zrem, zadd, freed = {}, {}, {}, {}
for q = 1, nq do zrem[q], zadd[q], freed[q] = {}, {}, {} end
for i = first, #ARGV, 4 do
  local op, q, id = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  dels[#dels + 1] = ARGV[3] .. id
  if op == 'f' then
    if ttl > 0 then redis.call('SET', ARGV[5] .. id, ARGV[i + 3], 'PX', ttl) end
    dels[#dels + 1] = ARGV[2] .. id
    dels[#dels + 1] = ARGV[4] .. id
    dels[#dels + 1] = ARGV[6] .. id
    table.insert(zrem[q], id)
  else
    if op == 'r' then redis.call('INCR', ARGV[6] .. id) end
    if op == 'd' and redis.call('DECR', ARGV[4] .. id) <= 0 then redis.call('DEL', ARGV[4] .. id) end
    table.insert(zadd[q], ARGV[i + 3])
    table.insert(zadd[q], id)
  end
  if ARGV[7 + q] == '1' then table.insert(freed[q], id) end
end
if #dels > 0 then redis.call('DEL', unpack(dels)) end
for q = 1, nq do
  local queue, wake, running = KEYS[3 * q - 2], KEYS[3 * q - 1], KEYS[3 * q]
  if #zrem[q] > 0 then redis.call('ZREM', queue, unpack(zrem[q])) end
  if #zadd[q] > 0 then redis.call('ZADD', queue, 'XX', unpack(zadd[q])) end
  if #freed[q] > 0 then redis.call('ZREM', running, unpack(freed[q])) end
  if #zadd[q] > 0 or #freed[q] > 0 then WAKE(wake) end
end
return (#ARGV - first + 1) / 4
""",
)

# Undoes a claim whose reply was lost. Its jobs carry the score the claim gave them; for each
# whose lock still holds our token: drop the lock, make the job due now and uncount the try
# that never ran. KEYS: per queue: queue, running set; ARGV: now ms, claimed score, lock
# prefix, retry prefix, token. Returns how many were released.
RELEASE = Script(
    "release",
    """
local released = 0
for q = 1, #KEYS, 2 do
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[q], ARGV[2], ARGV[2])) do
    if redis.call('GET', ARGV[3] .. id) == ARGV[5] then
      redis.call('DEL', ARGV[3] .. id)
      redis.call('ZADD', KEYS[q], 'XX', ARGV[1], id)
      redis.call('ZREM', KEYS[q + 1], id)
      if redis.call('DECR', ARGV[4] .. id) <= 0 then redis.call('DEL', ARGV[4] .. id) end
      released = released + 1
    end
  end
end
return released
""",
)

# Removes a queued job that has not started; used when an enqueue whose reply was lost turns
# out to have landed after all, and the job already ran inline. KEYS: queue, job key, in-progress
# key, result key; ARGV: job id. Returns 1 when withdrawn, 0 when the job never reached Redis,
# 2 when a worker already started or finished it.
WITHDRAW = Script(
    "withdraw",
    """
if redis.call('EXISTS', KEYS[3]) == 1 then return 2 end
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('DEL', KEYS[2])
  return 1
end
if redis.call('EXISTS', KEYS[4]) == 1 then return 2 end
return 0
""",
)

# Reliable batches over Redis lists (the analytics event buffer): a consumer moves a batch
# from the source list to a list of its own under a lease and deletes it after processing.

# KEYS: list; ARGV: items. Returns the new length.
LIST_PUSH = Script(
    "list_push",
    """
local n = 0
for i = 1, #ARGV, 1000 do
  n = redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
return n
""",
)

# KEYS: source, inflight zset, batch list; ARGV: max bytes, max items, lease deadline ms, batch id.
# Takes items from the head until max bytes is reached (at least one item). Returns them.
LIST_CLAIM = Script(
    "list_claim",
    """
local max_bytes, max_items = tonumber(ARGV[1]), tonumber(ARGV[2])
local out, size, start = {}, 0, 0
while size < max_bytes and #out < max_items do
  local page = redis.call('LRANGE', KEYS[1], start, start + 99)
  if #page == 0 then break end
  for _, item in ipairs(page) do
    out[#out + 1] = item
    size = size + #item
    if size >= max_bytes or #out >= max_items then break end
  end
  start = start + #page
end
if #out == 0 then return out end
redis.call('LTRIM', KEYS[1], #out, -1)
for i = 1, #out, 1000 do
  redis.call('RPUSH', KEYS[3], unpack(out, i, math.min(i + 999, #out)))
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
return out
""",
)

# KEYS: inflight zset, batch list, dead list; ARGV: batch id, dead items...
LIST_ACK = Script(
    "list_ack",
    """
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
for i = 2, #ARGV do redis.call('RPUSH', KEYS[3], ARGV[i]) end
return 1
""",
)

# Puts a batch back at the head of the source list, in its order, and forgets it.
# KEYS: source, inflight zset; ARGV: batch key prefix, now ms (return those whose lease is over)
# or -1 with a batch id (return that one), limit.
LIST_RETURN = Script(
    "list_return",
    """
local ids
if ARGV[2] == '-1' then ids = {ARGV[4]}
else ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3])) end
local returned = 0
for _, id in ipairs(ids) do
  local key = ARGV[1] .. id
  local items = redis.call('LRANGE', key, 0, -1)
  for i = #items, 1, -1 do redis.call('LPUSH', KEYS[1], items[i]) end
  redis.call('DEL', key)
  returned = returned + redis.call('ZREM', KEYS[2], id)
end
return returned
""",
)

# For each id: 2 if its result exists, 1 if it is queued or running, 0 if Redis has no trace of it.
# ARGV: job prefix, in-progress prefix, result prefix, ids...
PRESENCE = Script(
    "presence",
    """
local out = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  if redis.call('EXISTS', ARGV[3] .. id) == 1 then out[#out + 1] = 2
  elseif redis.call('EXISTS', ARGV[1] .. id, ARGV[2] .. id) > 0 then out[#out + 1] = 1
  else out[#out + 1] = 0 end
end
return out
""",
)

# Extends the locks this worker still holds, a running job's in-progress key, its queue score
# (when the job becomes claimable again) and its entry in a capped queue's running set
# together. KEYS: per queue: queue, running set; ARGV: now ms, lock ms, lock prefix, token,
# then per job: queue index, id. Returns how many locks were still held.
EXTEND = Script(
    "extend",
    """
local until_ms = tonumber(ARGV[1]) + tonumber(ARGV[2])
local held = 0
for i = 5, #ARGV, 2 do
  local q, id = tonumber(ARGV[i]), ARGV[i + 1]
  if redis.call('GET', ARGV[3] .. id) == ARGV[4] then
    redis.call('PEXPIRE', ARGV[3] .. id, ARGV[2])
    redis.call('ZADD', KEYS[2 * q - 1], 'XX', until_ms, id)
    redis.call('ZADD', KEYS[2 * q], 'XX', until_ms, id)
    held = held + 1
  end
end
return held
""",
)

# Makes the wake key what enqueues expect: a sorted set holding the one member 'w'. A key of
# another type, or a set grown with many members (each would wake a worker for nothing), is
# replaced. KEYS: wake. Returns 1 when it repaired something.
REPAIR_WAKE = Script(
    "repair_wake",
    """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' or (kind == 'zset' and redis.call('ZCARD', KEYS[1]) <= 1) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZADD', KEYS[1], 0, 'w')
return 1
""",
)

# One job as the read side sees it. KEYS: the queues it may be in; ARGV: job prefix, lock
# prefix, retry prefix, result prefix, id, progress prefix. Returns {record or nil, result or
# nil, lock holder or nil, try count or nil, queue score or nil, index of the queue holding it
# (0: none), progress or nil}.
INSPECT = Script(
    "inspect",
    """
local id = ARGV[5]
local vals = redis.call('MGET', ARGV[1] .. id, ARGV[4] .. id, ARGV[2] .. id, ARGV[3] .. id, ARGV[6] .. id)
local progress = vals[5]
vals[5], vals[6] = false, 0
for q = 1, #KEYS do
  local score = redis.call('ZSCORE', KEYS[q], id)
  if score then
    vals[5], vals[6] = score, q
    break
  end
end
vals[7] = progress
return vals
""",
)

# Cancels a job. KEYS: the queues it may be in; ARGV: job prefix, lock prefix, retry prefix,
# result prefix, ended prefix, cancel prefix, id, cancelled result record, result ttl ms,
# cancel request ttl ms. A finished job is left alone (3); a running one gets a cancel request
# its worker passes on to the job (2); a queued or deferred one is removed and gets a
# cancelled result (1); 0 when Redis has no trace of it. Returns {outcome, queue index}.
CANCEL = Script(
    "cancel",
    """
local id = ARGV[7]
if redis.call('EXISTS', ARGV[4] .. id) == 1 then return {3, 0} end
if redis.call('EXISTS', ARGV[2] .. id) == 1 then
  redis.call('SET', ARGV[6] .. id, '1', 'PX', ARGV[10])
  return {2, 0}
end
for q = 1, #KEYS do
  if redis.call('ZREM', KEYS[q], id) == 1 then
    redis.call('DEL', ARGV[1] .. id, ARGV[3] .. id, ARGV[5] .. id)
    redis.call('SET', ARGV[4] .. id, ARGV[8], 'PX', ARGV[9])
    return {1, q}
  end
end
return {0, 0}
""",
)

# Resumes a paused queue and wakes its workers. KEYS: paused flag, wake. Returns 1 if it was paused.
RESUME = Script(
    "resume",
    """
local was = redis.call('DEL', KEYS[1])
WAKE(KEYS[2])
return was
""",
)

# Rate limits shared by every worker (GCRA, the generic cell rate algorithm, with reservations).
# Each limit keeps one number, its theoretical arrival time (TAT, ms): spending `cost` moves it
# `cost * interval` ahead, and a job may start once TAT - now <= tolerance (the burst). A job
# that may not start yet is given the first time it may, and that time is reserved for it (TAT
# moves past it), so it waits in the queue and starts on its turn without asking again; jobs
# arriving meanwhile queue behind it. Never more than the limit, and no turn goes unused while
# jobs wait.
# KEYS: per limit: its TAT key. ARGV: now ms, reservation prefix, then per limit: interval ms
# per unit, tolerance ms; then per job: id, then its cost per limit (0 = does not spend it).
# Returns per job: 0 to start now, else the time (ms) reserved for it.
ACQUIRE = Script(
    "acquire",
    """
local now, nl = tonumber(ARGV[1]), #KEYS
local tat, interval, tolerance = {}, {}, {}
for l = 1, nl do
  tat[l] = tonumber(redis.call('GET', KEYS[l])) or 0
  interval[l], tolerance[l] = tonumber(ARGV[1 + 2 * l]), tonumber(ARGV[2 + 2 * l])
end
local out = {}
local step = nl + 1
for i = 3 + 2 * nl, #ARGV, step do
  local id = ARGV[i]
  local reserved = tonumber(redis.call('GET', ARGV[2] .. id))
  if reserved and reserved <= now then
    redis.call('DEL', ARGV[2] .. id)
    out[#out + 1] = 0
  elseif reserved then
    out[#out + 1] = reserved
  else
    local start = now
    for l = 1, nl do
      if tonumber(ARGV[i + l]) > 0 then start = math.max(start, tat[l] - tolerance[l]) end
    end
    for l = 1, nl do
      local cost = tonumber(ARGV[i + l])
      if cost > 0 then tat[l] = math.max(tat[l], start) + cost * interval[l] end
    end
    if start <= now then
      out[#out + 1] = 0
    else
      start = math.ceil(start)
      redis.call('SET', ARGV[2] .. id, start, 'PX', math.floor(start - now) + 3600000)
      out[#out + 1] = start
    end
  end
end
for l = 1, nl do
  local keep = math.max(math.ceil(tat[l] - now), 0) + 60000
  redis.call('SET', KEYS[l], string.format('%.3f', tat[l]), 'PX', keep)
end
return out
""",
)

# A page of a queue's jobs by score, with their records. KEYS: queue; ARGV: min score, max
# score, offset, limit, job prefix. Returns {id, score, record or nil...}.
PAGE = Script(
    "page",
    """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[2], 'WITHSCORES', 'LIMIT', ARGV[3], ARGV[4])
local out = {}
for i = 1, #ids, 2 do
  out[#out + 1] = ids[i]
  out[#out + 1] = ids[i + 1]
  out[#out + 1] = redis.call('GET', ARGV[5] .. ids[i])
end
return out
""",
)
