"""The `job finished` line on a fast path: the same JSON object, without the logging machinery.

One line per finished attempt is the worker's hottest log call. Through structlog's stdlib proxy,
a `LogRecord` and a formatter's processor chain it cost about 29 µs a line (35-45% of a draining
worker's CPU). With JSON output this module renders the same object (the job's bound context, its
fields, `event`, `level`, `logger`, `timestamp`) with one orjson call each, and writes the lines of
one event-loop turn with one write to the stream. An attempt hands over its end and the function
that gives the line's fields from it; the lines of the turn are built and rendered together when
the turn ends: about 3 µs a line less than building and rendering each one amid the jobs of the
turn (measured in a draining worker). So a value a job reported is rendered as it is at the end
of the turn, moments after the attempt ended.

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
from datetime import UTC, datetime
from typing import Any, TextIO, TypeVar

import orjson
import structlog

__all__ = ["EVENT", "JobLine", "JobLineHandler", "bind", "enabled", "install", "unbind", "write"]

LOGGER_NAME = "worker.execution.outcomes"
EVENT = "job finished"
# A line as `write` takes it and the end of the loop turn renders it: its level, the function
# that gives the line's own fields from the subject, the subject, the logging context's fields
# (None when the caller bound them all), and time.time(). A plain tuple: made per job.
JobLine = tuple[str, Callable[[Any], dict[str, Any]], Any, dict[str, Any] | None, float]
T = TypeVar("T")
_logger = logging.getLogger(LOGGER_NAME)
_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_APPEND_NEWLINE
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
            self.stream.write(b"".join(map(_render, lines)).decode())
        except (ValueError, OSError):  # a stream closed under us: like a handler's emit, go on
            pass
        finally:
            self.release()

    def emit(self, record: logging.LogRecord) -> None:
        self.write_pending()
        super().emit(record)


def _render(entry: JobLine) -> bytes:
    """One line; never raises, so no line of the turn is lost to another's bad value."""
    level, fields_of, subject, context, at = entry
    try:
        line = fields_of(subject)
        if context:
            line = {**context, **line}
    except Exception as exc:  # a fault in the fields function: say so rather than lose the line
        line = {"job_id": getattr(subject, "job_id", None), "render_error": _text(exc)}
    line["event"] = EVENT
    line["level"] = level
    line["logger"] = LOGGER_NAME
    line["timestamp"] = datetime.fromtimestamp(at, UTC)
    try:
        return orjson.dumps(line, default=str, option=_OPTIONS)
    except (TypeError, orjson.JSONEncodeError):  # a value orjson refuses (an int past 64 bits...)
        return orjson.dumps(
            {_text(k): _json_or_text(v) for k, v in line.items()}, default=str, option=_OPTIONS
        )


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


def enabled(levelno: int) -> bool:
    """Whether a job line at this level would be written at all (LOG_LEVEL, or a level set on
    the outcomes logger); checked before any field is built."""
    return _logger.isEnabledFor(levelno)


def write(level: str, fields_of: Callable[[T], dict[str, Any]], subject: T, *, bound: int = 0) -> bool:
    """Write one `job finished` line on the fast path; False when the ordinary logging path must
    take it (the caller then logs `fields_of(subject)` itself).

    The line is the logging context (structlog's context variables) updated with
    `fields_of(subject)`, called when the loop turn ends (see the module's docstring); the subject
    must not change until then. `bound`: how many context variables the caller bound, all of them
    among those fields (an attempt binds the job's id, name, mode and try). When the context holds
    no other variable (structlog's or any other library's), it is not read: that costs about 3 µs
    a line in a draining worker."""
    handler = _handler
    handlers = logging.root.handlers
    if handler is None or len(handlers) != 1 or handlers[0] is not handler or _logger.handlers:
        return False
    context = None
    if len(contextvars.copy_context()) > bound:
        context = structlog.contextvars.get_contextvars()
    handler.add((level, fields_of, subject, context, time.time()))
    return True
