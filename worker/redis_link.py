"""The one owner of Redis: the connection, its health (a circuit breaker) and the raw commands.

No other module imports `redis`. A connection error or timeout opens the breaker; while it is
open callers are told at once that Redis is unusable (no network I/O), and a background probe
closes it again when Redis answers PING. Each outage is logged once when it starts
(`redis unavailable`) and once when it ends (`redis connected`).

Job-state changes are the Lua scripts in `worker.scripts`, sent as EVALSHA (several pipelined
in one write when there are many) on a connection we hold ourselves, so we know whether a
command went out; `worker.queue_store` turns them into operations. An idle worker blocks on
BZPOPMIN on a dedicated connection whose reply timeout covers the block.
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
from redis.asyncio import ConnectionPool
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from settings import Settings
from worker import keys, scripts
from worker.scripts import Script
from worker.serializer import deserialize, serialize

__all__ = [
    "REDIS_DOWN_ERRORS",
    "REDIS_ERRORS",
    "REDIS_FAILURES",
    "REDIS_OUTAGE",
    "LinkState",
    "NotSent",
    "RedisLink",
    "ReplyLost",
]

log = structlog.get_logger("worker.redis")

_hiredis_pack: Callable[[tuple[Any, ...]], bytes] | None
try:  # hiredis packs commands in C, ~25x faster than redis-py's Python packer (bulk enqueue)
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - hiredis comes with redis[hiredis]
    _hiredis_pack = None

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


class LinkState(StrEnum):
    UP = "up"
    DOWN = "down"
    DISABLED = "disabled"


class NotSent(Exception):
    """Redis was unusable and the command certainly did not reach it."""


class ReplyLost(Exception):
    """The command may have reached Redis but no reply came back: the outcome is unknown.

    `replies` holds the replies that did arrive, in order, for a pipelined batch.
    """

    def __init__(self, message: str, replies: list[Any] | None = None) -> None:
        super().__init__(message)
        self.replies = replies or []


# Everything that means "Redis went away", including our own two signals.
REDIS_OUTAGE: tuple[type[BaseException], ...] = (NotSent, ReplyLost, *REDIS_DOWN_ERRORS)
# Everything a Redis call can raise: an outage, or a refusal such as OOM or NOPERM.
REDIS_FAILURES: tuple[type[BaseException], ...] = (NotSent, ReplyLost, *REDIS_ERRORS)


def _pack(conn: AbstractConnection, commands: list[tuple[Any, ...]]) -> list[bytes]:
    if _hiredis_pack is None:
        return conn.pack_commands(commands)
    return [_hiredis_pack(command) for command in commands]


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


# What each user of a link does while Redis is down, for the `redis unavailable` line.
_FALLBACKS = {"producer": "inline", "cache": "memory"}


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
        self._wake_conn: AbstractConnection | None = None
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
        if self._wake_conn is not None:
            await self._wake_conn.disconnect()
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
            except REDIS_OUTAGE as exc:
                # Redis went away again mid-callback: keep probing; callbacks run next time.
                self._open(exc)
                continue
            return

    async def _ping(self) -> None:
        timeout = self._settings.redis_connect_timeout + self._socket_timeout
        async with asyncio.timeout(timeout):
            await self.redis.ping()

    # -- commands ----------------------------------------------------------------------------

    async def run_script(self, script: Script, keys_: tuple[str, ...], args: tuple[Any, ...]) -> Any:
        """One EVALSHA; raises `NotSent` or `ReplyLost` (breaker opened) when Redis is unusable."""
        reply = (await self.run_scripts(script, [(keys_, args)]))[0]
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def run_scripts(
        self, script: Script, calls: Sequence[tuple[tuple[str, ...], tuple[Any, ...]]]
    ) -> list[Any]:
        """Many EVALSHA calls of one script, pipelined in one write; replies in order.

        A call Redis refused comes back as its `ResponseError`. Raises `NotSent` when nothing
        was sent and `ReplyLost` (carrying the replies that did arrive) when the connection
        failed after sending.
        """
        pool = self.redis.connection_pool
        try:
            async with asyncio.timeout(self._settings.redis_connect_timeout + 2 * self._socket_timeout):
                conn = await pool.get_connection()
        except REDIS_DOWN_ERRORS as exc:
            self._open(exc)
            raise NotSent(f"{type(exc).__name__}: {exc}") from exc
        replies: list[Any] = []
        try:
            replies = await self._evalsha_pipelined(conn, script, calls, replies)
        except REDIS_DOWN_ERRORS as exc:
            await conn.disconnect()
            self._open(exc)
            raise ReplyLost(f"{type(exc).__name__}: {exc}", replies) from exc
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)
        return replies

    async def _evalsha_pipelined(
        self,
        conn: AbstractConnection,
        script: Script,
        calls: Sequence[tuple[tuple[str, ...], tuple[Any, ...]]],
        replies: list[Any],
    ) -> list[Any]:
        # Every read is bounded by the connection's socket timeout; the whole by one per reply.
        async with asyncio.timeout(self._socket_timeout * (2 + len(calls))):
            commands = [("EVALSHA", script.sha, len(k), *k, *a) for k, a in calls]
            await conn.send_packed_command(_pack(conn, commands))
            await self._read_into(conn, len(commands), replies)
            missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
            if missing:
                # First use on this server (or after a restart): load it, resend only those.
                # Until their replies arrive those calls may or may not run: None, not "refused".
                for i in missing:
                    replies[i] = None
                await conn.send_command("SCRIPT", "LOAD", script.source)
                await conn.read_response()
                again = [commands[i] for i in missing]
                await conn.send_packed_command(_pack(conn, again))
                fresh: list[Any] = []
                await self._read_into(conn, len(again), fresh)
                for i, reply in zip(missing, fresh, strict=True):
                    replies[i] = reply
        return replies

    @staticmethod
    async def _read_into(conn: AbstractConnection, count: int, replies: list[Any]) -> None:
        for _ in range(count):
            try:
                replies.append(await conn.read_response())
            except ResponseError as exc:  # a refused call; the connection stays in step
                replies.append(exc)

    async def wait_for_wake(self, key: str, timeout_s: float) -> bool:
        """Block on BZPOPMIN `key` for up to `timeout_s` on a dedicated connection.

        True when woken, False on timeout. The connection's reply timeout is the block plus the
        worker's socket timeout, so a blackholed Redis is still noticed.
        """
        if self._wake_conn is None:
            pool = self.redis.connection_pool
            self._wake_conn = pool.connection_class(**{**pool.connection_kwargs, "socket_timeout": None})
        conn = self._wake_conn
        try:
            async with asyncio.timeout(
                timeout_s + self._socket_timeout + self._settings.redis_connect_timeout
            ):
                await conn.send_command("BZPOPMIN", key, f"{max(timeout_s, 0.001):.3f}")
                reply = await conn.read_response()
        except REDIS_DOWN_ERRORS as exc:
            await conn.disconnect()
            self._open(exc)
            raise
        except BaseException:
            await conn.disconnect()  # a cancelled block leaves a reply in flight
            raise
        return reply is not None

    async def presence(self, job_ids: list[str]) -> list[int]:
        """Per id: 2 finished (result kept), 1 queued or running, 0 unknown to Redis."""
        if not job_ids:
            return []
        prefixes = (keys.job_key(""), keys.in_progress_key(""), keys.result_key(""))
        return [int(v) for v in await self.run_script(scripts.PRESENCE, (), (*prefixes, *job_ids))]

    # -- reliable batches over lists (the analytics event buffer) ---------------------------

    async def list_push(self, key: str, items: Sequence[bytes]) -> int:
        """Append `items` in one round trip; return the list's length. NotSent covers a refusal."""
        if not self.usable:
            raise NotSent(f"Redis is {self._state.value}")
        try:
            return int(await self.run_script(scripts.LIST_PUSH, (key,), tuple(items)))
        except ResponseError as exc:  # e.g. OOM: a refused write wrote nothing
            raise NotSent(f"Redis refused the write: {exc}") from exc

    async def list_claim(
        self, source: str, inflight: str, batch_key: str, batch_id: str, *, max_bytes: int, max_items: int,
        lease_s: float,
    ) -> list[bytes]:  # fmt: skip
        """Move a batch from the head of `source` into `batch_key` under a lease; return its items."""
        deadline_ms = int((time.time() + lease_s) * 1000)
        args = (max_bytes, max_items, deadline_ms, batch_id)
        return list(await self.run_script(scripts.LIST_CLAIM, (source, inflight, batch_key), args))

    async def list_ack(
        self, inflight: str, batch_key: str, batch_id: str, *, dead_key: str, dead: Sequence[bytes] = ()
    ) -> None:
        """Forget a processed batch; `dead` items are kept aside in `dead_key` for inspection."""
        await self.run_script(scripts.LIST_ACK, (inflight, batch_key, dead_key), (batch_id, *dead))

    async def list_return(self, source: str, inflight: str, batch_prefix: str, batch_id: str) -> int:
        """Put one claimed batch back at the head of `source` (its processing failed)."""
        args = (batch_prefix, -1, 1, batch_id)
        return int(await self.run_script(scripts.LIST_RETURN, (source, inflight), args))

    async def list_return_expired(
        self, source: str, inflight: str, batch_prefix: str, *, limit: int = 100
    ) -> int:
        """Put back every batch whose lease is over (its consumer died); return how many."""
        args = (batch_prefix, int(time.time() * 1000), limit)
        return int(await self.run_script(scripts.LIST_RETURN, (source, inflight), args))

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
