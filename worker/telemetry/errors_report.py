"""Error reports to Sentry: failed attempts and the worker's own crashes, each reported once.

Built only when SENTRY_DSN is set, and then `sentry_sdk` is imported here, inside
`build_error_reports` and `ErrorReports`, never at import time. An attempt is reported when it
fails for good (`failed`); with SENTRY_REPORT_RETRIES every failed try (`retry`) is too, else a
retry that later succeeds sends nothing.

An event carries:
- tags job, job_id, job_try, mode, queue, outcome and error_kind, and trace_id when the job has
  a trace; the trace and span ids in the event's `trace` context, so Sentry links the trace;
- the `job` context: those fields and the job's arguments, masked by the dashboard's rules
  (`worker.telemetry.masking`: secret-named fields replaced, URL passwords and every
  configured secret cut out);
- the error's type and message with every configured secret cut out, and the stack trace
  without local variables (they hold arguments).
Nothing else: the SDK's default integrations (logging, excepthook, threads, libraries it would
patch), breadcrumbs, sessions and client reports are off, and no personal data is sent.

A process whose Sentry SDK is already set up (a web app reporting its own errors) keeps its
client: the runner's reports go through it, built by the rules above all the same.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, cast

from core.errors import JobFailed
from settings import Settings
from worker.telemetry.masking import Masker
from worker.telemetry.tracing import queue_label

if TYPE_CHECKING:
    from sentry_sdk._types import Event
    from sentry_sdk.client import BaseClient

__all__ = ["ErrorReports", "FailedAttempt", "build_error_reports"]

# How long a closing process waits for its reports to be sent.
_FLUSH_S = 2.0
# Clients this module set up (not a web app's own), so a later runtime with another DSN (a
# test, say) replaces ours but never the application's.
_OURS: weakref.WeakSet[Any] = weakref.WeakSet()


class FailedAttempt(Protocol):
    """What a report needs of an attempt's end (`worker.execution.AttemptEnd` has it)."""

    @property
    def job(self) -> str: ...
    @property
    def job_id(self) -> str: ...
    @property
    def job_try(self) -> int: ...
    @property
    def mode(self) -> str: ...
    @property
    def outcome(self) -> str: ...
    @property
    def kwargs(self) -> Mapping[str, Any]: ...
    @property
    def error(self) -> JobFailed | None: ...
    @property
    def queue(self) -> str | None: ...
    @property
    def trace_id(self) -> str | None: ...
    @property
    def span_id(self) -> str | None: ...
    @property
    def exception(self) -> BaseException | None: ...


class ErrorReports:
    """Sends the runner's error events through the process's Sentry client."""

    def __init__(self, settings: Settings) -> None:
        import sentry_sdk
        from sentry_sdk.utils import event_from_exception

        self._sentry = sentry_sdk
        self._event_from_exception = event_from_exception
        self._masker = Masker(settings.secret_values())
        self._queue_base = settings.queue_name
        self.report_retries = settings.sentry_report_retries
        # Stack traces are built with these options whatever the client's own: no local variables.
        self._stack_options = {
            **sentry_sdk.consts.DEFAULT_OPTIONS,
            "include_local_variables": False,
            "add_full_stack": False,
        }

    def wants(self, outcome: str) -> bool:
        """Whether an attempt that ended with `outcome` is reported."""
        return outcome == "failed" or (outcome == "retry" and self.report_retries)

    def attempt_failed(self, end: FailedAttempt) -> None:
        """Report one failed attempt (call only when `wants(end.outcome)`)."""
        error = end.error or JobFailed(end.job_id, "Error", "the job failed", "permanent")
        message = self._masker.text(error.message)
        event = self._exception_event(end.exception, error.error_type, message)
        queue = queue_label(self._queue_base, end.queue)
        tags: dict[str, Any] = {
            "job": end.job,
            "job_id": end.job_id,
            "job_try": str(end.job_try),  # Sentry's tags are strings
            "mode": end.mode,
            "outcome": end.outcome,
            "error_kind": error.kind,
        }
        if queue is not None:
            tags["queue"] = queue
        contexts: dict[str, Any] = {
            "job": {**tags, "arguments": self._masker.value(dict(end.kwargs))},
        }
        if end.trace_id is not None:
            tags["trace_id"] = end.trace_id
            contexts["trace"] = {"trace_id": end.trace_id, "span_id": end.span_id or "0" * 16}
        event.update(transaction=end.job, tags=tags, contexts=contexts)
        if end.exception is None:  # no stack to group by: one issue per job and error type
            event["fingerprint"] = ["maxbooster-job", end.job, error.error_type]
        self._sentry.capture_event(cast("Event", event))

    def crash(self, exc: BaseException, *, where: str) -> None:
        """Report a fault of the runner itself (a background loop, the worker process)."""
        event = self._exception_event(exc, type(exc).__name__, self._masker.text(str(exc)))
        event.update(tags={"component": where}, transaction=where, level="fatal")
        self._sentry.capture_event(cast("Event", event))

    def _exception_event(self, exc: BaseException | None, error_type: str, message: str) -> dict[str, Any]:
        if exc is None:
            return {"level": "error", "exception": {"values": [{"type": error_type, "value": message}]}}
        event, _ = self._event_from_exception(
            exc, client_options=self._stack_options, mechanism={"type": "maxbooster-jobs", "handled": True}
        )
        values = event["exception"]["values"]
        for value in values[:-1]:  # chained causes: their messages may echo a secret too
            value["value"] = self._masker.text(str(value.get("value") or ""))
        values[-1].update(type=error_type, value=message)
        return dict(event)

    async def flush(self) -> None:
        """Send what is queued, waiting at most a couple of seconds."""
        client = self._sentry.get_client()
        await asyncio.to_thread(client.flush, _FLUSH_S)


def _scrub_event(masker: Masker) -> Any:
    """A `before_send` for our own client: the last line of defence for an event's messages."""

    def before_send(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
        for value in event.get("exception", {}).get("values", []):
            value["value"] = masker.text(str(value.get("value") or ""))
        if isinstance(event.get("message"), str):
            event["message"] = masker.text(event["message"])
        return event

    return before_send


def build_error_reports(settings: Settings) -> ErrorReports:
    """Set up the Sentry client SENTRY_DSN names (unless the process has one); raises
    ImportError without the `sentry` extra."""
    import sentry_sdk

    if settings.sentry_dsn is None:
        raise ValueError("SENTRY_DSN is not set")
    dsn = settings.sentry_dsn.get_secret_value()
    client: BaseClient = sentry_sdk.get_client()
    if not client.is_active() or (client in _OURS and client.options.get("dsn") != dsn):
        if client in _OURS:
            client.close(timeout=_FLUSH_S)
        sentry_sdk.init(
            dsn=dsn,
            environment=settings.sentry_environment,
            release=settings.sentry_release,
            default_integrations=False,
            auto_enabling_integrations=False,
            include_local_variables=False,
            max_breadcrumbs=0,
            auto_session_tracking=False,
            send_client_reports=False,
            before_send=_scrub_event(Masker(settings.secret_values())),
        )
        _OURS.add(sentry_sdk.get_client())
    return ErrorReports(settings)
