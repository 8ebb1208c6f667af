"""The `job finished` line on a fast path: the same JSON object, without the logging machinery.

One line per finished attempt is the worker's hottest log call. Through structlog's stdlib proxy,
a `LogRecord` and a formatter's processor chain it cost about 29 µs a line (35-45% of a draining
worker's CPU, on the machine of the first measurements). With JSON output this module renders
the same object (the job's bound context, its fields, `event`, `level`, `logger`, `timestamp`)
with one orjson call each, and writes the lines of one event-loop turn with one write to the
stream. An attempt hands over its end and the function that gives the line's fields from it;
the lines of the turn are built and rendered together when the turn ends: about 3 µs a line
less, on that machine, than building and rendering each one amid the jobs of the turn. So a
value a job reported is rendered as it is at the end of the turn, moments after the attempt
ended.

It takes a line only while the handler `configure_logging` installed is the root logger's only
handler; when a test's log capture or an application's own handlers are in place, the line goes
the ordinary way. A line written by the ordinary way first flushes the pending job lines, so the
order of lines in the stream is the order they were logged. A process killed with SIGKILL loses
at most the lines of the loop turn it was in.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable
from itertools import chain
from typing import Any, TextIO, TypeVar

import orjson
import structlog

__all__ = ["EVENT", "TAIL_KEYS", "JobLine", "JobLineHandler", "bind", "install", "unbind", "write"]

LOGGER_NAME = "worker.execution.outcomes"
EVENT = "job finished"
# A line as `write` takes it and the end of the loop turn renders it: the end of its JSON for its
# level (`_TAILS`), the function that gives the line's own fields from the subject, the subject,
# the logging context's fields (None when the caller bound them all), and time.time(). A plain
# tuple: made per job.
JobLine = tuple[bytes, Callable[[Any], dict[str, Any]], Any, dict[str, Any] | None, float]
T = TypeVar("T")
_logger = logging.getLogger(LOGGER_NAME)
# The fields every line ends with, after its own: a field of the logging context by one of these
# names is left out, and the fields function must not give one.
TAIL_KEYS = frozenset(("event", "level", "logger", "timestamp"))
_handler: JobLineHandler | None = None
# structlog's context variable for each key an attempt binds, taken from the first bind's token.
_context_vars: dict[str, contextvars.ContextVar[Any]] = {}


class JobLineHandler(logging.StreamHandler[TextIO]):
    """The root handler for JSON output, holding the job lines of the current loop turn."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._pending: list[JobLine] = []

    def add(self, line: JobLine) -> None:
        """A line to render at the end of this loop turn."""
        pending = self._pending
        pending.append(line)
        if len(pending) == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop (an inline run from synchronous code): write now
                self.flush()

    def flush(self) -> None:
        self.write_pending()
        super().flush()

    def write_pending(self) -> None:
        if not self._pending:
            return
        self.acquire()  # one writer at a time (an `emit` from another thread, the loop's flush)
        try:
            # Take the lines present now and leave any added meanwhile (`add` takes no lock) for
            # the next write: a swap of the whole list could hand those to a list written out.
            pending = self._pending
            count = len(pending)
            lines = pending[:count]
            del pending[:count]
            self.stream.write(b"".join(chain.from_iterable(map(_render, lines))).decode())
        except (ValueError, OSError):  # a stream closed under us: like a handler's emit, go on
            pass
        finally:
            self.release()

    def emit(self, record: logging.LogRecord) -> None:
        self.write_pending()
        super().emit(record)


def _render(entry: JobLine) -> tuple[bytes, ...]:
    """One line; never raises, so no line of the turn is lost to another's bad value.

    The line is the fields' object without its closing brace, the level's tail (`event`,
    `level`, `logger`) and the timestamp from `time.time()` as structlog's
    `TimeStamper(fmt="iso", utc=True)` writes it: a quarter less (0.3 µs a line) than adding the
    four to the dict and rendering it with a datetime."""
    tail, fields_of, subject, context, at = entry
    try:
        line = fields_of(subject)
        if context:
            line = {**{k: v for k, v in context.items() if k not in TAIL_KEYS}, **line}
    except Exception as exc:  # a fault in the fields function: say so rather than lose the line
        line = {"job_id": getattr(subject, "job_id", None), "render_error": _text(exc)}
    try:
        body = orjson.dumps(line, default=str)
    except (TypeError, orjson.JSONEncodeError):  # a value orjson refuses (an int past 64 bits...)
        body = orjson.dumps({_text(k): _json_or_text(v) for k, v in line.items()}, default=str)
    second = int(at)
    if second != _Clock.second:
        _Clock.tick(second)
    micros = int((at - second) * 1_000_000)
    if len(body) == 2:  # `{}`: no field before the tail's, so no comma
        tail = tail[1:]
    # The parts, joined with the turn's other lines in one go: fewer copies than concatenating.
    return body[:-1], tail, _Clock.text, _DIGITS[micros // 1000], _DIGITS[micros % 1000], _END


class _Clock:
    """The timestamp's text up to its fraction, made once a second."""

    second = -1
    text = b""

    @classmethod
    def tick(cls, second: int) -> None:
        cls.text = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second)).encode()
        cls.second = second


# Three digits of a timestamp's fraction by their value: two lookups cost less than formatting.
_DIGITS = [b"%03d" % n for n in range(1000)]
_END = b'Z"}\n'


def _tail(levelno: int) -> bytes:
    """The end of a line at `levelno` up to its timestamp's value, from `,` to the opening quote."""
    level = logging.getLevelName(levelno).lower()
    fields = orjson.dumps({"event": EVENT, "level": level, "logger": LOGGER_NAME, "timestamp": ""})
    return b"," + fields[1:-2]  # `{` and the empty value's `"}` left out


_TAILS = {level: _tail(level) for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR)}


def _json_or_text(value: Any) -> Any:
    """`value` when orjson takes it, else its text: the line keeps every other field's type."""
    try:
        orjson.dumps(value, default=str)
    except (TypeError, orjson.JSONEncodeError):
        return _text(value)
    return value


def _text(value: Any) -> str:
    try:
        return str(value)
    except Exception:
        return f"<{type(value).__name__} that cannot be shown>"


def install(handler: JobLineHandler | None) -> None:
    """Called by `configure_logging`: the handler for JSON output, or None for console output."""
    global _handler
    if _handler is not None and _handler is not handler:
        _handler.write_pending()
    _handler = handler


def bind(fields: dict[str, Any]) -> list[contextvars.Token[Any]]:
    """`structlog.contextvars.bind_contextvars(**fields)` for an attempt, at a third of its cost
    (it builds each variable's name and looks it up on every call): the variables structlog made
    on the first bind of each key are set directly. Undo with `unbind`."""
    tokens = []
    known = _context_vars
    for key, value in fields.items():
        var = known.get(key)
        if var is None:
            token = structlog.contextvars.bind_contextvars(**{key: value})[key]
            known[key] = token.var
        else:
            token = var.set(value)
        tokens.append(token)
    return tokens


def unbind(tokens: list[contextvars.Token[Any]]) -> None:
    """Restore the context as it was before `bind` (`reset_contextvars`)."""
    for token in reversed(tokens):
        token.var.reset(token)


def write(levelno: int, fields_of: Callable[[T], dict[str, Any]], subject: T, *, bound: int = 0) -> bool:
    """Write one `job finished` line at `levelno` (DEBUG, INFO, WARNING or ERROR) on the fast
    path. True: the line is on its way, or below the level configured (LOG_LEVEL, or a level set
    on the outcomes logger) and nothing of it is built. False: the ordinary logging path must
    take it (the caller then logs `fields_of(subject)` itself).

    The line is the logging context (structlog's context variables) updated with
    `fields_of(subject)`, called when the loop turn ends (see the module's docstring); the subject
    must not change until then, and its fields must not be named `event`, `level`, `logger` or
    `timestamp`. `bound`: how many context variables the caller bound, all of them among those
    fields (an attempt binds the job's id, name, mode and try). When the context holds no other
    variable (structlog's or any other library's), it is not read: that costs about 3 µs a line
    in a draining worker."""
    handler = _handler
    handlers = logging.root.handlers
    if handler is None or len(handlers) != 1 or handlers[0] is not handler or _logger.handlers:
        return False
    if not _logger.isEnabledFor(levelno):
        return True
    context = None
    if len(contextvars.copy_context()) > bound:
        context = structlog.contextvars.get_contextvars()
    handler.add((_TAILS[levelno], fields_of, subject, context, time.time()))
    return True
