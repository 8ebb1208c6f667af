"""Logging, configured once at the entry point (CLI or the web app's startup).

structlog renders JSON (one object per line) in production and readable lines on a terminal.
Standard-library loggers (asyncio, httpx, ...) are routed through the same renderer. Job context
is bound through contextvars so every line a job logs carries its id, name and mode.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import orjson
import structlog

from settings import Settings
from worker.telemetry import joblines

__all__ = ["configure_logging"]


def _json_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default or str).decode()


def configure_logging(settings: Settings, *, stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    fmt = settings.log_format
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor
    if fmt == "json":
        # Tracebacks as data, without local variables: those hold job arguments, addresses, keys.
        shared.append(
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        )
        renderer = structlog.processors.JSONRenderer(serializer=_json_dumps)
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=stream.isatty(), exception_formatter=structlog.dev.plain_traceback
        )

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    # JSON output also takes the `job finished` lines on their fast path (`joblines`).
    handler = joblines.JobLineHandler(stream) if fmt == "json" else logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    joblines.install(handler if isinstance(handler, joblines.JobLineHandler) else None)
    root.setLevel(settings.log_level)
    # The SendGrid SDK's HTTP client logs request headers (the API key) at DEBUG.
    logging.getLogger("python_http_client").setLevel(logging.WARNING)
    # httpx logs every request at INFO; the job's own line already says what happened.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
