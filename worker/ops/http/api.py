"""The `/v1` routes: enqueue (one, a batch), validate, status, events, and the job list.

Every route authenticates first (`auth`), then works through the service's one `Producer`, so
validation, routing (queue, inline, spool, reject), deduplication by job id and trace context
are exactly the Python producer's. Arguments arrive as JSON and are validated in JSON mode with
the job's own argument model (an ISO date string is a date, as for `python -m worker enqueue`);
a refusal names each field and problem, with the Python producer's wording as the message.
"""

from __future__ import annotations

import re
import traceback
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import pydantic
import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from core.codec import valid_traceparent
from core.errors import BackendError, EnqueueError, JobFailed, JobValidationError, UnknownJobError
from core.registry import JobDefinition, Registry
from settings import QUEUE_NAME_RULE, Settings
from worker.backend import CancelOutcome
from worker.ops.http.auth import EVENTS_SCOPE, Principal, TokenAuth
from worker.ops.http.openapi import MAX_WAIT_S
from worker.ops.http.responses import ApiError, json_response, json_type, read_json_object
from worker.producer import Producer

__all__ = ["ApiState", "api_routes", "endpoint"]

log = structlog.get_logger(__name__)

_JOB_ID = re.compile(r"^[\x21-\x7e]{1,200}$")
_MAX_DEFER_S = 365 * 86400.0
_WAIT_TRUE_S = 30.0
_ENQUEUE_FIELDS = ("args", "job_id", "defer_by", "wait", "background", "queue")
_BATCH_FIELDS = ("jobs", "defer_by", "background", "queue")
_BATCH_JOB_FIELDS = ("args", "job_id")
_QUEUE_RULE = "must be a queue name: 1-40 lowercase letters, digits, _ and -"

Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class ApiState:
    """What the routes share: settings, registry, auth, and the producer while it is open."""

    settings: Settings
    registry: Registry
    auth: TokenAuth
    producer: Producer | None = None
    schema_json: bytes = b""
    openapi_json: bytes = b""
    _fields: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def definition(self, name: str) -> JobDefinition[Any, Any]:
        try:
            return self.registry.get(name)
        except UnknownJobError as exc:
            raise ApiError(404, "unknown_job", str(exc)) from None

    def arg_names(self, definition: JobDefinition[Any, Any]) -> tuple[str, ...]:
        names = self._fields.get(definition.name)
        if names is None:
            names = self._fields[definition.name] = tuple(definition.args_model.model_fields)
        return names

    def ready_producer(self) -> Producer:
        if self.producer is None:
            raise ApiError(503, "not_ready", "the service is starting or stopping; retry in a moment")
        return self.producer


def _state(request: Request) -> ApiState:
    state: ApiState = request.app.state.api
    return state


def _caller(request: Request) -> Principal:
    return _state(request).auth.authenticate(request.headers.get("authorization"))


def endpoint(handler: Handler) -> Handler:
    """Answer an `ApiError` with its JSON body, and anything unexpected with a JSON 500 and one
    log line whose traceback has no local variables (a request's headers hold its token)."""

    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as exc:
            return exc.response()
        except BackendError as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.error("request failed: Redis refused", path=request.url.path, error=error)
            return ApiError(503, "backend_refused", f"Redis refused the command: {exc}").response()
        except Exception as exc:  # the HTTP boundary: a 500 the client may retry, logged once
            log.error(
                "request failed",
                method=request.method,
                path=request.url.path,
                error=f"{type(exc).__name__}: {exc}",
                traceback="".join(traceback.format_exception(exc)),
            )
            producer = _state(request).producer
            if producer is not None and (errors := producer.runtime.observability.errors) is not None:
                errors.crash(exc, where=f"serve: {request.method} {request.url.path}")  # with SENTRY_DSN
            return ApiError(500, "internal_error", "the service failed; see its log").response()

    run.__name__ = handler.__name__
    run.__doc__ = handler.__doc__
    return run


# -- request fields ------------------------------------------------------------------------------


def _invalid(field_name: str, problem: str, message: str | None = None) -> ApiError:
    return ApiError(
        422,
        "invalid_request",
        message or f"{field_name} {problem}",
        fields=[{"field": field_name, "problem": problem}],
    )


def _only(body: Mapping[str, Any], allowed: tuple[str, ...], where: str = "") -> None:
    for key in body:
        if key not in allowed:
            raise _invalid(f"{where}{key}", f"is not a field here; use {', '.join(allowed)}")


def _job_id(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _JOB_ID.match(value):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise _invalid(where, f"must be 1 to 200 printable ASCII characters without spaces (got {shown})")
    return value


def _request_job_id(request: Request, body: Mapping[str, Any]) -> str | None:
    header = _job_id(request.headers.get("idempotency-key"), "Idempotency-Key")
    given = _job_id(body.get("job_id"), "job_id")
    if header is not None and given is not None and header != given:
        raise _invalid("job_id", "differs from the Idempotency-Key header; send one of them, or the same id")
    return given or header


def _seconds(value: Any, where: str, maximum: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= maximum:
        raise _invalid(where, f"must be a number of seconds from 0 to {maximum:g} (got {value!r})")
    return float(value)


def _wait(value: Any) -> float | None:
    if value is True:
        return _WAIT_TRUE_S
    if value is False or value is None:
        return None
    return _seconds(value, "wait", MAX_WAIT_S) or None


def _flag(value: Any, where: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _invalid(where, f"must be true or false (got {value!r})")
    return value


def _queue(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not QUEUE_NAME_RULE.fullmatch(value):
        raise _invalid("queue", f"{_QUEUE_RULE} (got {value!r})")
    return value


def _traceparent(request: Request) -> str | None:
    # W3C Trace Context: a receiver ignores a traceparent it cannot parse (a new trace starts).
    value = request.headers.get("traceparent")
    return value if value is not None and valid_traceparent(value) else None


def _fields(exc: pydantic.ValidationError, where: str) -> list[dict[str, str]]:
    out = []
    for err in exc.errors(include_url=False):
        path = ".".join(str(p) for p in err["loc"])
        if err["type"] == "missing":
            problem = "is required"
        elif err["type"] == "extra_forbidden":
            problem = "is not an argument of this job"
        else:
            problem = str(err["msg"])
        out.append({"field": f"{where}.{path}" if path else where, "problem": problem})
    return out


def typed_args(api: ApiState, definition: JobDefinition[Any, Any], args: Any, where: str) -> dict[str, Any]:
    """The job's keyword arguments, validated from JSON by its own model (strict, JSON mode)."""
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ApiError(
            422,
            "invalid_arguments",
            f"{definition.name}: {where} must be a JSON object of the job's arguments",
            fields=[{"field": where, "problem": f"is a JSON {json_type(args)}, not an object"}],
        )
    raw = orjson.dumps(args)
    try:
        model = definition.args_model.model_validate_json(raw)
    except pydantic.ValidationError as exc:
        try:  # the Python producer's own wording of the same refusal
            definition.payload_from_json(raw, max_bytes=api.settings.max_payload_bytes)
            message = f"{definition.name}: invalid arguments"
        except JobValidationError as refusal:
            message = str(refusal)
        raise ApiError(422, "invalid_arguments", message, fields=_fields(exc, where)) from None
    return {name: getattr(model, name) for name in api.arg_names(definition)}


def _refused(exc: JobValidationError) -> ApiError:
    # Arguments too large, not runnable with this service's settings (an AI job without AI_*).
    return ApiError(422, "invalid_arguments", str(exc))


# -- routes ------------------------------------------------------------------------------------


@endpoint
async def enqueue(request: Request) -> Response:
    api = _state(request)
    caller = _caller(request)
    definition = api.definition(request.path_params["name"])
    caller.require(definition.name)
    body = await read_json_object(request, api.settings.api_max_body_bytes)
    _only(body, _ENQUEUE_FIELDS)
    job_id = _request_job_id(request, body)
    defer_by = _seconds(body.get("defer_by"), "defer_by", _MAX_DEFER_S)
    wait = _wait(body.get("wait"))
    background = _flag(body.get("background"), "background")
    kwargs = typed_args(api, definition, body.get("args"), "args")
    producer = api.ready_producer()
    try:
        handle = await producer.enqueue_job(
            definition,
            kwargs,
            job_id=job_id,
            defer_by=defer_by,
            background=background,
            traceparent=_traceparent(request),
            queue=_queue(body.get("queue")),
        )
    except JobValidationError as exc:
        raise _refused(exc) from None
    except EnqueueError as exc:
        raise ApiError(503, "enqueue_refused", str(exc)) from None
    out: dict[str, Any] = {
        "job_id": handle.job_id,
        "name": handle.name,
        "mode": handle.mode,
        "duplicate": handle.duplicate,
    }
    if wait is None:
        return json_response(out, 202)
    if handle.mode == "spooled":
        out["status"] = "pending"  # no result until Redis is back and a worker has run it
        return json_response(out, 202)
    try:
        out["result"] = await handle.result(timeout=wait)
        out["status"] = "complete"
    except JobFailed as exc:
        out["status"], out["error"] = "failed", exc.to_dict()
    except TimeoutError:
        out["status"] = "pending"
        return json_response(out, 202)
    return json_response(out, 200)


@endpoint
async def enqueue_batch(request: Request) -> Response:
    api = _state(request)
    caller = _caller(request)
    definition = api.definition(request.path_params["name"])
    caller.require(definition.name)
    body = await read_json_object(request, api.settings.api_max_body_bytes)
    _only(body, _BATCH_FIELDS)
    jobs = body.get("jobs")
    if not isinstance(jobs, list) or not jobs:
        raise _invalid("jobs", "must be a non-empty array of {args, job_id?} objects")
    limit = api.settings.api_max_batch_jobs
    if len(jobs) > limit:
        raise _invalid("jobs", f"holds {len(jobs)} jobs, over API_MAX_BATCH_JOBS ({limit}); split the call")
    defer_by = _seconds(body.get("defer_by"), "defer_by", _MAX_DEFER_S)
    background = _flag(body.get("background"), "background")
    kwargs_list = []
    ids: list[str | None] = []
    for i, job in enumerate(jobs):
        where = f"jobs[{i}]"
        if not isinstance(job, dict):
            raise _invalid(where, f"is a JSON {json_type(job)}, not an object")
        _only(job, _BATCH_JOB_FIELDS, f"{where}.")
        try:
            kwargs_list.append(typed_args(api, definition, job.get("args"), f"{where}.args"))
        except ApiError as exc:
            exc.message = f"{where}: {exc.message}"
            raise
        ids.append(_job_id(job.get("job_id"), f"{where}.job_id"))
    job_ids = [i or uuid.uuid4().hex for i in ids] if any(ids) else None
    producer = api.ready_producer()
    try:
        handles = await producer.enqueue_many(
            definition,
            kwargs_list,
            job_ids=job_ids,
            defer_by=defer_by,
            background=background,
            traceparent=_traceparent(request),
            queue=_queue(body.get("queue")),
        )
    except JobValidationError as exc:
        raise _refused(exc) from None
    except EnqueueError as exc:
        queued = [h.job_id for h in exc.queued]
        raise ApiError(503, "enqueue_refused", str(exc), extra={"queued": queued}) from None
    counts: Counter[str] = Counter(h.mode for h in handles)
    counts["duplicate"] = sum(h.duplicate for h in handles)
    return json_response(
        {
            "name": definition.name,
            "jobs": [{"job_id": h.job_id, "mode": h.mode, "duplicate": h.duplicate} for h in handles],
            "counts": dict(counts),
        },
        202,
    )


@endpoint
async def validate(request: Request) -> Response:
    """The arguments as the job will receive them (defaults filled in), or 422; nothing is queued."""
    api = _state(request)
    caller = _caller(request)
    definition = api.definition(request.path_params["name"])
    caller.require(definition.name)
    body = await read_json_object(request, api.settings.api_max_body_bytes)
    _only(body, ("args",))
    typed_args(api, definition, body.get("args"), "args")
    try:
        definition.check_settings(api.settings)
        payload = definition.payload_from_json(
            orjson.dumps(body.get("args") or {}), max_bytes=api.settings.max_payload_bytes
        )
    except JobValidationError as exc:
        raise _refused(exc) from None
    return json_response({"name": definition.name, "args": payload})


@endpoint
async def job_status(request: Request) -> Response:
    api = _state(request)
    caller = _caller(request)
    job_id = request.path_params["job_id"]
    report = await api.ready_producer().status(job_id)
    if isinstance(report.get("job"), str):
        caller.require(report["job"])
    status = report["status"]
    return json_response(report, 404 if status == "not_found" else 503 if status == "unknown" else 200)


@endpoint
async def cancel_job(request: Request) -> Response:
    """Cancel a job: a waiting one is removed (its status becomes cancelled), a running one is
    asked to stop. 200 with the outcome; 404 when there is no such job."""
    api = _state(request)
    caller = _caller(request)
    job_id = _job_id(request.path_params["job_id"], "job_id") or ""
    producer = api.ready_producer()
    report = await producer.status(job_id)
    if isinstance(report.get("job"), str):
        caller.require(report["job"])
    elif caller.jobs is not None:  # a scoped token may cancel only jobs it can see are its own
        raise ApiError(404, "not_found", f"no job {job_id!r} this token may cancel")
    try:
        outcome = await producer.cancel(job_id)
    except EnqueueError as exc:
        raise ApiError(503, "cancel_unavailable", str(exc)) from None
    status = 404 if outcome is CancelOutcome.NOT_FOUND else 200
    return json_response({"job_id": job_id, "outcome": outcome.value}, status)


@endpoint
async def change_queue(request: Request) -> Response:
    """Pause or resume a queue (a token limited to some jobs may not)."""
    api = _state(request)
    caller = _caller(request)
    if caller.jobs is not None:
        raise ApiError(403, "forbidden", "pausing and resuming queues needs a token without a job scope")
    name = request.path_params["name"]
    if not QUEUE_NAME_RULE.fullmatch(name):
        raise _invalid("name", f"{_QUEUE_RULE} (got {name!r})")
    action = request.path_params["action"]
    if action not in ("pause", "resume"):
        raise ApiError(404, "not_found", f"no action {action!r} on queues; use pause or resume")
    producer = api.ready_producer()
    if action == "pause":
        changed = await producer.pause_queue(name)
        return json_response({"queue": name, "paused": True, "was_paused": not changed})
    changed = await producer.resume_queue(name)
    return json_response({"queue": name, "paused": False, "was_paused": changed})


@endpoint
async def track_events(request: Request) -> Response:
    api = _state(request)
    _caller(request).require(EVENTS_SCOPE)
    body = await read_json_object(request, api.settings.api_max_body_bytes)
    _only(body, ("events",))
    events = body.get("events")
    if not isinstance(events, list):
        raise _invalid("events", f"must be an array of event objects (got a JSON {json_type(events)})")
    producer = api.ready_producer()
    try:
        result = await producer.track_events(events)
    except EnqueueError as exc:  # the in-process buffer is full and stayed full (Redis down long)
        raise ApiError(503, "events_not_accepted", str(exc)) from None
    except JobValidationError as exc:  # too many events in one call, or no family takes events
        raise ApiError(422, "events_refused", str(exc)) from None
    return json_response(
        {
            "accepted": result.accepted,
            "refused": result.refused,
            "errors": [{"index": e.index, "reason": e.reason, "event_id": e.event_id} for e in result.errors],
            "stored_in": result.stored_in,
        }
    )


@endpoint
async def list_jobs(request: Request) -> Response:
    _caller(request)
    return Response(_state(request).schema_json, media_type="application/json")


@endpoint
async def openapi(request: Request) -> Response:
    _caller(request)
    return Response(_state(request).openapi_json, media_type="application/json")


def api_routes() -> list[BaseRoute]:
    return [
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/v1/jobs", list_jobs, methods=["GET"]),
        Route("/v1/events", track_events, methods=["POST"]),
        Route("/v1/jobs/{name}", enqueue, methods=["POST"]),
        Route("/v1/jobs/{name}/batch", enqueue_batch, methods=["POST"]),
        Route("/v1/jobs/{name}/validate", validate, methods=["POST"]),
        Route("/v1/queues/{name}/{action:str}", change_queue, methods=["POST"]),
        Route("/v1/jobs/{job_id:path}", job_status, methods=["GET"]),
        Route("/v1/jobs/{job_id:path}", cancel_job, methods=["DELETE"]),
    ]
