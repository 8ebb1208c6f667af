"""The connection to Redis and its health: a circuit breaker, and pipelined commands that say
whether they reached the server.

A connection error or timeout opens the breaker; while it is open callers are told at once that
Redis is unusable (`NotSent`, no network I/O), and a background probe closes it again when Redis
answers PING. Each outage is logged once when it starts (`redis unavailable`) and once when it
ends (`redis connected`).

Commands go out on a connection we hold ourselves, several pipelined in one write, so we know
whether they were sent: `NotSent` when nothing left this process, `ReplyLost` when the
connection failed after sending (the outcome is unknown), `BackendRefused` when Redis answered
with an error that is not an outage (wrong password, NOPERM, WRONGTYPE, OOM). An idle worker
blocks on BZPOPMIN on a connection of its own whose reply timeout covers the block.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import structlog
from redis.asyncio import ConnectionPool
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import AuthenticationError, NoScriptError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.errors import BackendRefused, BackendUnavailable, CredentialsRefused, NotSent, ReplyLost
from settings import Settings
from worker.backend.scripts import Script

__all__ = ["Command", "Lane", "LinkState", "RedisLink", "refused"]

log = structlog.get_logger(__name__)

_hiredis_pack: Callable[[tuple[Any, ...]], bytes] | None
try:  # hiredis packs commands in C, ~25x faster than redis-py's Python packer (bulk enqueue)
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - hiredis comes with redis[hiredis]
    _hiredis_pack = None

# Errors that mean "Redis is not usable right now"; the breaker opens on any of them. A wrong
# password is a `ConnectionError` to redis-py; it is a refusal here (see `_refusal`).
_DOWN_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    TimeoutError,
    OSError,
)

Command = tuple[Any, ...]


class LinkState(StrEnum):
    UP = "up"
    DOWN = "down"
    DISABLED = "disabled"


def _pack(conn: AbstractConnection, commands: Sequence[Command]) -> list[bytes]:
    if _hiredis_pack is None:
        return conn.pack_commands(commands)
    return [_hiredis_pack(command) for command in commands]


async def _read_into(
    conn: AbstractConnection, count: int, replies: list[Any], deadline: asyncio.Timeout, budget: float
) -> None:
    for _ in range(count):
        try:
            replies.append(await conn.read_response())
        except ResponseError as exc:  # a refused call; the connection stays in step
            replies.append(exc)
        _extend(deadline, budget)


def _extend(deadline: asyncio.Timeout, budget: float) -> None:
    """A reply arrived: leave at least `budget` seconds for the next one."""
    when = deadline.when()
    now = asyncio.get_running_loop().time()
    if when is not None and when - now < budget:
        deadline.reschedule(now + 2 * budget)


# How Redis words a refusal of this client (a wrong password, or an ACL without a command).
_CREDENTIAL_WORDS = ("WRONGPASS", "NOAUTH", "NOPERM", "can't run this command", "no permissions")
_CREDENTIALS_FIX = (
    "fix the user and password in REDIS_URL, or grant the user the commands the README's "
    "least-privilege section lists"
)


def _refusal(exc: BaseException) -> BackendRefused | None:
    """A refusal dressed as a connection error (bad credentials), or None for a real outage."""
    if isinstance(exc, AuthenticationError) or (
        isinstance(exc, RedisError) and any(w in str(exc) for w in _CREDENTIAL_WORDS)
    ):
        return CredentialsRefused(f"Redis refused this client: {exc}; {_CREDENTIALS_FIX}")
    return None


def refused(what: str, reply: ResponseError) -> BackendRefused:
    """The error for a reply Redis refused; a credentials refusal says what to fix."""
    text = f"Redis refused {what}: {type(reply).__name__}: {reply}"
    if any(w in str(reply) for w in _CREDENTIAL_WORDS):
        return CredentialsRefused(f"{text}; {_CREDENTIALS_FIX}")
    return BackendRefused(text)


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


# A lane's connection that sat idle this long is checked before use, as the pool checks its own
# (a recv() that costs a seventh of an enqueue). Used more recently, it just answered: a server
# that closed it since (a restart within this window) makes that call `ReplyLost`, which falls
# back as any lost reply does (inline, spool or refusal, and the possible copy withdrawn).
_LANE_CHECK_AFTER_S = 0.1


@dataclass
class Lane:
    """A connection kept for one caller that sends one call at a time (a group of enqueues, the
    worker's claims, its outcome writes), so a busy caller skips the pool's checkout, its check
    for unread data and its release: a quarter of a single enqueue's CPU. The check also waits
    a loop turn, so a claim sent from a busy worker went out only after the jobs it had just
    started ran. After `_LANE_CHECK_AFTER_S` idle it is checked like a pooled one, so a
    connection the server closed while idle is replaced, not failed on. A call that finds the
    lane busy takes a pooled connection instead."""

    conn: AbstractConnection | None = None
    used: float = 0.0
    busy: bool = False


class RedisLink:
    """Redis connection plus breaker. `role` names the user in log lines (producer, worker)."""

    def __init__(self, settings: Settings, *, role: str, socket_timeout: float | None = None) -> None:
        self._settings = settings
        self._role = role
        self._socket_timeout = socket_timeout or settings.redis_socket_timeout
        self._state = LinkState.DISABLED
        self._pool: ConnectionPool | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._up_event = asyncio.Event()
        self._on_up: list[Callable[[], Awaitable[None]]] = []
        self._wake_conn: AbstractConnection | None = None
        # A BZPOPMIN in flight on `_wake_conn`, and the keys it blocks on (see `wait_for_wake`).
        self._block: asyncio.Task[bool] | None = None
        self._block_keys: tuple[str, ...] = ()
        self._lanes: list[Lane] = []
        self.outages = 0
        if settings.redis_enabled:
            self._pool = ConnectionPool.from_url(
                settings.redis_url.get_secret_value(),
                socket_connect_timeout=settings.redis_connect_timeout,
                # No per-read timeout in the client: redis-py would start a timer for every reply
                # and a task for every write. Every use of a connection here sits inside a
                # deadline of our own (`_pipeline`, `_connection`, `_ping`, the wake-up block).
                socket_timeout=None,
                # Skip CLIENT SETINFO on connect: two round trips per new connection for nothing.
                lib_name=None,
                lib_version=None,
                **_tls_options(settings, role),
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
    def socket_timeout(self) -> float:
        return self._socket_timeout

    def on_up(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run `callback` each time the breaker closes after an outage."""
        self._on_up.append(callback)

    async def start(self) -> LinkState:
        """Probe once (bounded by the timeouts) and log whether Redis is used.

        Raises `BackendRefused` when Redis refuses the credentials: that is a configuration
        error, not an outage, and the caller decides what to do about it.
        """
        if self._pool is None:
            log.warning("redis not configured, jobs run inline", role=self._role)
            return self._state
        try:
            await self._ping()
        except BackendRefused:
            raise
        except _DOWN_ERRORS as exc:
            self._open(exc, first=True)
        else:
            self._close_breaker()
        return self._state

    async def wait_until_up(self) -> None:
        if self._pool is None:
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
        await self._drop_block()
        if self._wake_conn is not None:
            await self._wake_conn.disconnect()
        for lane in self._lanes:
            if lane.conn is not None:
                await lane.conn.disconnect()
        if self._pool is not None:
            await self._pool.aclose()

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

    def _close_breaker(self) -> None:
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
            except BackendRefused as exc:
                log.error("redis refuses this client", role=self._role, error=str(exc))
                continue
            except _DOWN_ERRORS:
                continue
            self._close_breaker()
            try:
                for callback in self._on_up:
                    await callback()
            except BackendUnavailable as exc:
                # Redis went away again mid-callback: keep probing; callbacks run next time.
                self._open(exc)
                continue
            except BackendRefused as exc:
                log.error("a callback after reconnecting was refused by Redis", error=str(exc))
            return

    async def _ping(self) -> None:
        try:
            conn = await self._connection()  # connecting sends AUTH: a wrong password fails here
        except BaseException as exc:
            refusal = _refusal(exc)
            if refusal is not None:
                raise refusal from None
            raise
        try:
            async with asyncio.timeout(self._settings.redis_connect_timeout + self._socket_timeout):
                await conn.send_command("PING")
                await conn.read_response()
        except BaseException as exc:
            await conn.disconnect()
            refusal = _refusal(exc)
            if refusal is not None:
                raise refusal from None
            raise
        finally:
            await self._release(conn)

    def lane(self) -> Lane:
        """A connection of its own for a caller that never has two calls in flight."""
        lane = Lane()
        self._lanes.append(lane)
        return lane

    async def _connection(self, lane: Lane | None = None) -> AbstractConnection:
        if self._pool is None:
            raise NotSent("Redis is not configured (REDIS_URL is empty)")
        pool = self._pool
        if (
            lane is not None
            and lane.conn is not None
            and lane.conn.is_connected
            and time.monotonic() - lane.used <= _LANE_CHECK_AFTER_S
        ):
            return lane.conn  # busy and checked a moment ago: no I/O, no timer
        async with asyncio.timeout(self._settings.redis_connect_timeout + 2 * self._socket_timeout):
            if lane is None:
                conn: AbstractConnection = await pool.get_connection()
                return conn
            if lane.conn is None:
                lane.conn = pool.connection_class(**pool.connection_kwargs)
            # Connected, nothing unread, not closed by the server: what the pool checks.
            await pool.ensure_connection(lane.conn)
            return lane.conn

    async def _release(self, conn: AbstractConnection, lane: Lane | None = None) -> None:
        if lane is not None:
            lane.used = time.monotonic()
        elif self._pool is not None:
            await self._pool.release(conn)

    # -- commands ----------------------------------------------------------------------------

    async def execute(
        self, commands: Sequence[Command], *, scripts: Sequence[Script] = (), lane: Lane | None = None
    ) -> list[Any]:
        """Send `commands` pipelined in one write; one reply per command, in order.

        A command Redis refused comes back as its `ResponseError` (the others still ran). EVALSHA
        of a script in `scripts` that Redis does not know yet is loaded and resent. Raises
        `NotSent` when nothing was sent, `ReplyLost` (with the replies that did arrive) when the
        connection failed after sending, and `BackendRefused` for refused credentials. With a
        `lane`, its own connection is used instead of one from the pool (or, when the lane has
        a call in flight, a pooled one after all).
        """
        if not self.usable:
            raise NotSent(f"Redis is {self._state.value}")
        if lane is None or lane.busy:
            return await self._execute(commands, scripts, None)
        lane.busy = True
        try:
            return await self._execute(commands, scripts, lane)
        finally:
            lane.busy = False

    async def _execute(
        self,
        commands: Sequence[Command],
        scripts: Sequence[Script],
        lane: Lane | None,
        *,
        breaker: bool = True,
    ) -> list[Any]:
        """`execute`'s work; with `breaker=False` a failure leaves the breaker as it is."""
        try:
            conn = await self._connection(lane)
        except BackendRefused:
            raise
        except _DOWN_ERRORS as exc:
            refusal = _refusal(exc)
            if refusal is not None:
                raise refusal from None
            if breaker:
                self._open(exc)
            raise NotSent(f"{type(exc).__name__}: {exc}") from exc
        replies: list[Any] = []
        try:
            await self._pipeline(conn, commands, scripts, replies)
        except _DOWN_ERRORS as exc:
            await conn.disconnect()
            error = self._lost(exc, replies, breaker=breaker)
            raise error from (None if isinstance(error, BackendRefused) else exc)
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            await self._release(conn, lane)
        return replies

    def _lost(
        self, exc: BaseException, replies: list[Any] | None = None, *, breaker: bool = True
    ) -> BackendRefused | ReplyLost:
        """What a connection that failed after sending raises: a refusal (credentials), or
        `ReplyLost` with the replies that did arrive (the breaker opened, unless `breaker` is
        False)."""
        refusal = _refusal(exc)
        if refusal is not None:
            return refusal
        if breaker:
            self._open(exc)
        return ReplyLost(f"{type(exc).__name__}: {exc}", replies)

    async def one_off(self, commands: Sequence[Command]) -> list[Any]:
        """Send `commands` whatever the breaker says, and leave the breaker alone: for checks
        (doctor) that want the real error. Raises `NotSent` / `ReplyLost` naming the underlying
        error, or `BackendRefused`."""
        return await self._execute(commands, (), None, breaker=False)

    async def command(self, *args: Any) -> Any:
        """One command; a refusal raises `BackendRefused`."""
        reply = (await self.execute([args]))[0]
        if isinstance(reply, ResponseError):
            raise refused(str(args[0]), reply)
        return reply

    async def script(
        self, script: Script, keys: Sequence[str], args: Sequence[Any], *, lane: Lane | None = None
    ) -> Any:
        """One EVALSHA of `script`; a refusal (OOM, NOPERM, WRONGTYPE...) raises `BackendRefused`."""
        reply = (await self.scripts(script, [(keys, args)], lane=lane))[0]
        if isinstance(reply, ResponseError):
            raise refused(f"the {script.name} script", reply)
        return reply

    async def scripts(
        self,
        script: Script,
        calls: Sequence[tuple[Sequence[str], Sequence[Any]]],
        *,
        lane: Lane | None = None,
    ) -> list[Any]:
        """Many EVALSHA calls of one script in one write; replies in order (see `execute`)."""
        commands = [("EVALSHA", script.sha, len(k), *k, *a) for k, a in calls]
        return await self.execute(commands, scripts=[script], lane=lane)

    async def _pipeline(
        self,
        conn: AbstractConnection,
        commands: Sequence[Command],
        scripts: Sequence[Script],
        replies: list[Any],
    ) -> None:
        # The write and the first reply get two socket timeouts; each further reply one more
        # after the reply before it. One timer for the whole pipeline, moved on only when less
        # than a socket timeout is left, so a stall is noticed one to two socket timeouts after
        # the last reply, however long the pipeline.
        budget = self._socket_timeout
        async with asyncio.timeout(2 * budget) as deadline:
            await conn.send_packed_command(_pack(conn, commands))
            await _read_into(conn, len(commands), replies, deadline, budget)
            missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
            if not missing:
                return
            # First use on this server (or after a restart): load it, resend only those. Until
            # their replies arrive those calls may or may not run: None, not "refused".
            by_sha = {script.sha: script for script in scripts}
            for i in missing:
                replies[i] = None
            for sha in {commands[i][1] for i in missing}:
                await conn.send_command("SCRIPT", "LOAD", by_sha[sha].source)
                await conn.read_response()
                _extend(deadline, budget)
            again = [commands[i] for i in missing]
            await conn.send_packed_command(_pack(conn, again))
            fresh: list[Any] = []
            await _read_into(conn, len(again), fresh, deadline, budget)
            for i, reply in zip(missing, fresh, strict=True):
                replies[i] = reply

    async def wait_for_wake(self, wake_keys: Sequence[str], timeout_s: float) -> bool:
        """Wait up to `timeout_s` for a wake-up on `wake_keys`: True when woken, False when the
        time is up. Raises `NotSent` or `ReplyLost` when Redis is unusable and `BackendRefused`
        when it refuses the block (a wake key of the wrong type, say).

        The block is a BZPOPMIN on a dedicated connection, but the time is kept here: Redis ends
        a blocking command's timeout on its own clock tick (10 a second by default), up to
        100 ms late, and a deferred job or a retry would start that late. So the wait ends on
        time, and a block still in flight is left to run and taken up by the next wait (a
        wake-up it catches meanwhile is kept for that wait, not lost).
        """
        if self._pool is None:
            raise NotSent("Redis is not configured (REDIS_URL is empty)")
        keys = tuple(wake_keys)
        block = self._block
        if block is not None and self._block_keys != keys:  # the queues changed: a new block
            await self._drop_block()
            block = None
        if block is not None and block.done():
            self._block = None
            if block.result():  # raises what the block raised
                return True
            block = None
        if block is None:
            block = self._block = asyncio.get_running_loop().create_task(self._blocking_pop(keys, timeout_s))
            self._block_keys = keys
        done, _ = await asyncio.wait({block}, timeout=max(timeout_s, 0.0))
        if not done:
            return False
        self._block = None
        return block.result()

    async def _blocking_pop(self, wake_keys: tuple[str, ...], timeout_s: float) -> bool:
        """One BZPOPMIN. Its reply timeout is the block plus the worker's socket timeout, so a
        blackholed Redis is still noticed."""
        assert self._pool is not None
        if self._wake_conn is None:
            pool = self._pool
            self._wake_conn = pool.connection_class(**pool.connection_kwargs)  # no read timeout: ours
        conn = self._wake_conn
        try:
            async with asyncio.timeout(
                timeout_s + self._socket_timeout + self._settings.redis_connect_timeout
            ):
                await conn.send_command("BZPOPMIN", *wake_keys, f"{max(timeout_s, 0.001):.3f}")
                reply = await conn.read_response()
        except ResponseError as exc:
            raise refused(f"to block on {', '.join(wake_keys)}", exc) from None
        except _DOWN_ERRORS as exc:
            await conn.disconnect()
            error = self._lost(exc)
            raise error from (None if isinstance(error, BackendRefused) else exc)
        except BaseException:
            await conn.disconnect()  # a cancelled block leaves a reply in flight
            raise
        return reply is not None

    async def _drop_block(self) -> None:
        block, self._block = self._block, None
        if block is not None:
            block.cancel()
            with contextlib.suppress(BaseException):
                await block
