"""The one owner of Redis: the connection, its health (a circuit breaker) and the raw commands.

No other module imports `redis`. A connection error or timeout opens the breaker; while it is
open callers are told at once that Redis is unusable (no network I/O), and a background probe
closes it again when Redis answers PING. Each outage is logged once when it starts
(`redis unavailable`) and once when it ends (`redis connected`).

Enqueueing is one atomic Lua script (one round trip) that keeps arq's data model: the job key
holds arq's job record and the queue sorted set holds the id scored by its start time, so an
arq worker, arq's `Job` API and our worker all read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from enum import StrEnum
from typing import Any

import structlog
from arq.connections import ArqRedis
from arq.jobs import serialize_job
from redis.asyncio import ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from settings import Settings
from worker import keys
from worker.serializer import deserialize, serialize

__all__ = [
    "REDIS_DOWN_ERRORS",
    "REDIS_ERRORS",
    "EnqueueOutcome",
    "LinkState",
    "NotSent",
    "RedisLink",
    "ReplyLost",
    "WithdrawOutcome",
]

log = structlog.get_logger("worker.redis")

# Errors that mean "Redis is not usable right now"; the breaker opens on any of them.
REDIS_DOWN_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    TimeoutError,
    OSError,
)

# Any error from Redis or the client library, including refusals such as OOM or NOPERM.
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, *REDIS_DOWN_ERRORS)

# KEYS: job key, result key, queue; ARGV: job record, expiry ms, score, job id.
# Returns 1 when queued, 0 when a job or result with this id already exists (deduplication).
_ENQUEUE_LUA = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('PSETEX', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
return 1
"""

# Removes a queued job that has not started; used when an enqueue whose reply was lost turns
# out to have landed after all, and the job already ran inline. KEYS: queue, job key, in-progress
# key, result key; ARGV: job id. Returns 1 when withdrawn, 0 when the job never reached Redis,
# 2 when a worker already started or finished it.
_WITHDRAW_LUA = """
if redis.call('EXISTS', KEYS[3]) == 1 then return 2 end
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('DEL', KEYS[2])
  return 1
end
if redis.call('EXISTS', KEYS[4]) == 1 then return 2 end
return 0
"""


# Claims due jobs for a worker in one round trip: for each id still due in the queue, set its
# in-progress lock (holding the worker's token) if no other worker holds it. KEYS: queue;
# ARGV: now ms, lock ms, in-progress key prefix, token, ids... Returns a flat list of id, score.
_CLAIM_LUA = """
local claimed = {}
for i = 5, #ARGV do
  local id = ARGV[i]
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score and tonumber(score) <= tonumber(ARGV[1]) then
    if redis.call('SET', ARGV[3] .. id, ARGV[4], 'NX', 'PX', ARGV[2]) then
      claimed[#claimed + 1] = id
      claimed[#claimed + 1] = score
    end
  end
end
return claimed
"""


# Drops in-progress locks that still hold the given token. ARGV: prefix, token, ids...
_RELEASE_LUA = """
local released = 0
for i = 3, #ARGV do
  if redis.call('GET', ARGV[1] .. ARGV[i]) == ARGV[2] then
    redis.call('DEL', ARGV[1] .. ARGV[i])
    released = released + 1
  end
end
return released
"""


# What each user of a link does while Redis is down, for the `redis unavailable` line.
_FALLBACKS = {"producer": "inline", "cache": "memory"}


# For each id: 2 if its result exists, 1 if it is queued or running, 0 if Redis has no trace of it.
# ARGV: job prefix, in-progress prefix, result prefix, ids...
_PRESENCE_LUA = """
local out = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  if redis.call('EXISTS', ARGV[3] .. id) == 1 then out[#out + 1] = 2
  elseif redis.call('EXISTS', ARGV[1] .. id, ARGV[2] .. id) > 0 then out[#out + 1] = 1
  else out[#out + 1] = 0 end
end
return out
"""


# Extends the in-progress locks this worker still holds. ARGV: prefix, token, ms, ids...
_EXTEND_LUA = """
local extended = 0
for i = 4, #ARGV do
  if redis.call('GET', ARGV[1] .. ARGV[i]) == ARGV[2] then
    redis.call('PEXPIRE', ARGV[1] .. ARGV[i], ARGV[3])
    extended = extended + 1
  end
end
return extended
"""


# Reliable batches over Redis lists: a consumer moves a batch from the source list to a list of
# its own, registered with a lease deadline, and deletes it only after the batch is processed.
# A consumer that dies leaves the batch behind; once the lease passes it is returned.

# KEYS: list; ARGV: items. Returns the new length.
_LIST_PUSH_LUA = """
local n = 0
for i = 1, #ARGV, 1000 do
  n = redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
return n
"""

# KEYS: source, inflight zset, batch list; ARGV: max bytes, max items, lease deadline ms, batch id.
# Takes items from the head until max bytes is reached (at least one item). Returns them.
_LIST_CLAIM_LUA = """
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
"""

# KEYS: inflight zset, batch list, dead list; ARGV: batch id, dead items...
_LIST_ACK_LUA = """
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
for i = 2, #ARGV do redis.call('RPUSH', KEYS[3], ARGV[i]) end
return 1
"""

# Puts a batch back at the head of the source list, in its order, and forgets it.
# KEYS: source, inflight zset; ARGV: batch key prefix, now ms (return those whose lease is over)
# or -1 with a batch id (return that one), limit.
_LIST_RETURN_LUA = """
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
"""


class LinkState(StrEnum):
    UP = "up"
    DOWN = "down"
    DISABLED = "disabled"


class EnqueueOutcome(StrEnum):
    QUEUED = "queued"
    DUPLICATE = "duplicate"


class WithdrawOutcome(StrEnum):
    WITHDRAWN = "withdrawn"
    NEVER_ARRIVED = "never_arrived"
    ALREADY_STARTED = "already_started"


class NotSent(Exception):
    """Redis was unusable and the command certainly did not reach it."""


class ReplyLost(Exception):
    """The command may have reached Redis but no reply came back: the outcome is unknown."""


# Everything that means "Redis went away", including our own two signals.
_OUTAGE: tuple[type[BaseException], ...] = (NotSent, ReplyLost, *REDIS_DOWN_ERRORS)


def _sha1(script: str) -> str:
    import hashlib

    return hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()


def _tls_options(settings: Settings, role: str) -> dict[str, Any]:
    """Certificate and hostname verification on by default for rediss:// (redis-py's default
    does not check the hostname)."""
    if not settings.redis_url.get_secret_value().startswith("rediss://"):
        return {}
    client_cert = {"ssl_certfile": settings.redis_tls_cert_file, "ssl_keyfile": settings.redis_tls_key_file}
    if settings.redis_tls_insecure:
        log.warning(
            "TLS verification disabled by REDIS_TLS_INSECURE: the Redis server is not authenticated",
            role=role,
        )
        return {"ssl_cert_reqs": "none", "ssl_check_hostname": False, **client_cert}
    return {
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_ca_certs": settings.redis_tls_ca_file,
        **client_cert,
    }


class RedisLink:
    """Redis connection plus breaker. `role` names the user in log lines (producer, worker)."""

    def __init__(self, settings: Settings, *, role: str, socket_timeout: float | None = None) -> None:
        self._settings = settings
        self._role = role
        self._socket_timeout = socket_timeout or settings.redis_socket_timeout
        self._state = LinkState.DISABLED
        self._redis: ArqRedis | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._up_event = asyncio.Event()
        self._on_up: list[Callable[[], Awaitable[None]]] = []
        self.outages = 0
        if settings.redis_enabled:
            pool = ConnectionPool.from_url(
                settings.redis_url.get_secret_value(),
                socket_connect_timeout=settings.redis_connect_timeout,
                socket_timeout=self._socket_timeout,
                # Skip CLIENT SETINFO on connect: two round trips per new connection for nothing.
                lib_name=None,
                lib_version=None,
                **_tls_options(settings, role),
            )
            self._redis = ArqRedis(
                pool,
                job_serializer=serialize,
                job_deserializer=deserialize,
                default_queue_name=settings.queue_name,
            )
            self._state = LinkState.DOWN

    # -- state -------------------------------------------------------------------------------

    @property
    def state(self) -> LinkState:
        return self._state

    @property
    def usable(self) -> bool:
        return self._state is LinkState.UP

    @property
    def redis(self) -> ArqRedis:
        if self._redis is None:
            raise NotSent("Redis is not configured (REDIS_URL is empty)")
        return self._redis

    def on_up(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run `callback` each time the breaker closes after an outage."""
        self._on_up.append(callback)

    async def start(self) -> LinkState:
        """Probe once (bounded by the timeouts) and log whether Redis is used."""
        if self._redis is None:
            log.warning("redis not configured, jobs run inline", role=self._role)
            return self._state
        try:
            await self._ping()
        except REDIS_DOWN_ERRORS as exc:
            self._open(exc, first=True)
        else:
            self._close_breaker(first=True)
        return self._state

    async def wait_until_up(self) -> None:
        if self._redis is None:
            raise NotSent("Redis is not configured (REDIS_URL is empty)")
        await self._up_event.wait()

    def report_failure(self, exc: BaseException) -> None:
        """Tell the link that a command failed because Redis is unusable."""
        self._open(exc)

    async def aclose(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
            self._probe_task = None
        if self._redis is not None:
            await self._redis.aclose(close_connection_pool=True)

    def _open(self, exc: BaseException, *, first: bool = False) -> None:
        if self._state is LinkState.DISABLED:
            return
        was_up = self._state is LinkState.UP
        self._state = LinkState.DOWN
        self._up_event.clear()
        if was_up or first:
            self.outages += 1
            log.warning(
                "redis unavailable",
                role=self._role,
                url=self._settings.redis_url_redacted,
                error=f"{type(exc).__name__}: {exc}",
                fallback=_FALLBACKS.get(self._role, "reconnecting"),
            )
        if self._probe_task is None or self._probe_task.done():
            self._probe_task = asyncio.get_running_loop().create_task(self._probe_until_up())

    def _close_breaker(self, *, first: bool = False) -> None:
        self._state = LinkState.UP
        self._up_event.set()
        log.info("redis connected", role=self._role, url=self._settings.redis_url_redacted)

    async def _probe_until_up(self) -> None:
        # The producer probes at a steady pace so queueing resumes soon after Redis returns; the
        # worker, with nobody waiting on it, backs off up to 5x the interval.
        interval = self._settings.redis_probe_interval
        delay = interval
        while True:
            await asyncio.sleep(delay)
            if self._role == "worker":
                delay = min(delay * 2, interval * 5)
            try:
                await self._ping()
            except REDIS_DOWN_ERRORS:
                continue
            self._close_breaker()
            try:
                for callback in self._on_up:
                    await callback()
            except _OUTAGE as exc:
                # Redis went away again mid-callback: keep probing; callbacks run next time.
                self._open(exc)
                continue
            return

    async def _ping(self) -> None:
        timeout = self._settings.redis_connect_timeout + self._socket_timeout
        async with asyncio.timeout(timeout):
            await self.redis.ping()

    # -- commands ----------------------------------------------------------------------------

    async def enqueue(
        self,
        *,
        job_id: str,
        name: str,
        payload: dict[str, Any],
        queue: str,
        defer_by_s: float | None = None,
        job_try: int | None = None,
    ) -> EnqueueOutcome:
        """Queue one job atomically in one round trip.

        Raises `NotSent` when Redis is unusable and the job certainly was not written, and
        `ReplyLost` when the command went out but no reply came back (it may have landed).
        Either way the breaker is open afterwards.
        """
        if not self.usable:
            raise NotSent(f"Redis is {self._state.value}")
        now_ms = int(time.time() * 1000)
        score = now_ms + int((defer_by_s or 0) * 1000)
        expires_ms = score - now_ms + 86_400_000
        record = serialize_job(name, (), payload, job_try, now_ms, serializer=serialize)
        keys_ = (keys.job_key(job_id), keys.result_key(job_id), queue)
        args = (record, expires_ms, score, job_id)
        reply = await self._eval(_ENQUEUE_LUA, keys_, args)
        return EnqueueOutcome.QUEUED if reply == 1 else EnqueueOutcome.DUPLICATE

    async def withdraw_if_pending(self, job_id: str, queue: str) -> WithdrawOutcome:
        """Remove a queued job that no worker has started."""
        keys_ = (queue, keys.job_key(job_id), keys.in_progress_key(job_id), keys.result_key(job_id))
        reply = await self._eval(_WITHDRAW_LUA, keys_, (job_id,))
        return {1: WithdrawOutcome.WITHDRAWN, 0: WithdrawOutcome.NEVER_ARRIVED}.get(
            reply, WithdrawOutcome.ALREADY_STARTED
        )

    async def claim(self, queue: str, job_ids: list[str], lock_ms: int, token: str) -> list[tuple[str, int]]:
        """Take the in-progress lock of each due job no other worker holds; return (id, score)."""
        if not job_ids:
            return []
        now_ms = int(time.time() * 1000)
        args = (now_ms, lock_ms, keys.in_progress_key(""), token, *job_ids)
        flat = await self._eval(_CLAIM_LUA, (queue,), args)
        return [(flat[i].decode(), int(float(flat[i + 1]))) for i in range(0, len(flat), 2)]

    async def presence(self, job_ids: list[str]) -> list[int]:
        """Per id: 2 finished (result kept), 1 queued or running, 0 unknown to Redis."""
        if not job_ids:
            return []
        prefixes = (keys.job_key(""), keys.in_progress_key(""), keys.result_key(""))
        return [int(v) for v in await self._eval(_PRESENCE_LUA, (), (*prefixes, *job_ids))]

    async def extend_claims(self, job_ids: list[str], token: str, lock_ms: int) -> int:
        """Push back the expiry of the locks this token holds; return how many it still held."""
        if not job_ids:
            return 0
        return int(await self._eval(_EXTEND_LUA, (), (keys.in_progress_key(""), token, lock_ms, *job_ids)))

    async def release_claims(self, job_ids: list[str], token: str) -> int:
        """Drop locks this token holds, for claims whose reply was lost; return how many."""
        if not job_ids:
            return 0
        return int(await self._eval(_RELEASE_LUA, (), (keys.in_progress_key(""), token, *job_ids)))

    # -- reliable batches over lists (the analytics event buffer) ---------------------------

    async def list_push(self, key: str, items: Sequence[bytes]) -> int:
        """Append `items` in one round trip; return the list's length. NotSent covers a refusal."""
        if not self.usable:
            raise NotSent(f"Redis is {self._state.value}")
        try:
            return int(await self._eval(_LIST_PUSH_LUA, (key,), tuple(items)))
        except ResponseError as exc:  # e.g. OOM: a refused write wrote nothing
            raise NotSent(f"Redis refused the write: {exc}") from exc

    async def list_claim(
        self, source: str, inflight: str, batch_key: str, batch_id: str, *, max_bytes: int, max_items: int,
        lease_s: float,
    ) -> list[bytes]:  # fmt: skip
        """Move a batch from the head of `source` into `batch_key` under a lease; return its items."""
        deadline_ms = int((time.time() + lease_s) * 1000)
        args = (max_bytes, max_items, deadline_ms, batch_id)
        return list(await self._eval(_LIST_CLAIM_LUA, (source, inflight, batch_key), args))

    async def list_ack(
        self, inflight: str, batch_key: str, batch_id: str, *, dead_key: str, dead: Sequence[bytes] = ()
    ) -> None:
        """Forget a processed batch; `dead` items are kept aside in `dead_key` for inspection."""
        await self._eval(_LIST_ACK_LUA, (inflight, batch_key, dead_key), (batch_id, *dead))

    async def list_return(self, source: str, inflight: str, batch_prefix: str, batch_id: str) -> int:
        """Put one claimed batch back at the head of `source` (its processing failed)."""
        args = (batch_prefix, -1, 1, batch_id)
        return int(await self._eval(_LIST_RETURN_LUA, (source, inflight), args))

    async def list_return_expired(
        self, source: str, inflight: str, batch_prefix: str, *, limit: int = 100
    ) -> int:
        """Put back every batch whose lease is over (its consumer died); return how many."""
        args = (batch_prefix, int(time.time() * 1000), limit)
        return int(await self._eval(_LIST_RETURN_LUA, (source, inflight), args))

    async def _eval(self, script: str, keys_: tuple[str, ...], args: tuple[Any, ...]) -> Any:
        """EVALSHA on a connection we hold ourselves, so we know whether the command went out."""
        pool = self.redis.connection_pool
        deadline = self._settings.redis_connect_timeout + 2 * self._socket_timeout
        try:
            async with asyncio.timeout(deadline):
                conn = await pool.get_connection()
        except REDIS_DOWN_ERRORS as exc:
            self._open(exc)
            raise NotSent(f"{type(exc).__name__}: {exc}") from exc
        try:
            async with asyncio.timeout(deadline):
                try:
                    await conn.send_command("EVALSHA", _sha1(script), len(keys_), *keys_, *args)
                    return await conn.read_response()
                except NoScriptError:
                    await conn.send_command("EVAL", script, len(keys_), *keys_, *args)
                    return await conn.read_response()
        except ResponseError:
            raise
        except REDIS_DOWN_ERRORS as exc:
            await conn.disconnect()
            self._open(exc)
            raise ReplyLost(f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)

    async def get_bytes(self, key: str) -> bytes | None:
        """GET `key`, bounded by the link's timeouts; errors are the caller's to report."""
        async with asyncio.timeout(self._settings.redis_connect_timeout + self._socket_timeout):
            value = await self.redis.get(key)
        return None if value is None else bytes(value)

    async def set_bytes(self, key: str, value: bytes, ttl_s: float) -> None:
        """SET `key` with an expiry (at least 1 ms), bounded by the link's timeouts."""
        async with asyncio.timeout(self._settings.redis_connect_timeout + self._socket_timeout):
            await self.redis.set(key, value, px=max(1, int(ttl_s * 1000)))

    async def fetch_result(self, job_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(keys.result_key(job_id))
        return None if raw is None else deserialize(raw)
