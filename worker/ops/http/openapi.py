"""The OpenAPI 3.1 document of the HTTP API, made from the job registry.

Each job gets its own request schema (`<job>_enqueue`, whose `args` is the job's argument
schema from `worker.ops.schema`), so a generated client or a tester sees exactly what each job
takes. The argument models are built at run time from the job signatures, which is why the
document is assembled here rather than inferred by a framework from static route annotations.
"""

from __future__ import annotations

from typing import Any

from core.registry import Registry
from worker.ops.schema import job_schemas

__all__ = ["MAX_WAIT_S", "openapi_document"]

MAX_WAIT_S = 60.0
_REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "stable, machine-readable"},
                "message": {"type": "string", "description": "what was wrong and how to fix it"},
                "fields": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["field", "problem"],
                        "properties": {"field": {"type": "string"}, "problem": {"type": "string"}},
                    },
                },
                "queued": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "batch only: ids of the jobs that did reach the queue before the refusal",
                },
            },
        }
    },
}

_JOB_ID = {
    "type": "string",
    "minLength": 1,
    "maxLength": 200,
    "pattern": "^[\\x21-\\x7e]+$",
    "description": "your id for the job (printable ASCII, no spaces); enqueueing an id again while the "
    "job or its result is known creates nothing and answers duplicate=true",
}
_DEFER_BY = {
    "type": "number",
    "minimum": 0,
    "maximum": 31_536_000,
    "description": "seconds to wait before the job may start; never run early (spooled while Redis is down)",
}
_WAIT = {
    "anyOf": [{"type": "boolean"}, {"type": "number", "minimum": 0, "maximum": MAX_WAIT_S}],
    "description": "wait for the result and return it: seconds (true = 30)",
}
_QUEUE = {
    "type": "string",
    "pattern": "^[a-z0-9][a-z0-9_-]{0,39}$",
    "description": "the queue to put the job on instead of the one its definition names (critical, "
    "default, bulk, ai, or your own; a worker consumes the queues WORKER_QUEUES lists)",
}
_BACKGROUND = {
    "type": "boolean",
    "default": False,
    "description": "while Redis is down, a job that falls back to running inline in the service runs "
    "before the call returns (the default: it has run when you get the answer); true returns at once "
    "and runs it in the background (lost if the service process dies meanwhile)",
}

_COMMON: dict[str, Any] = {
    "Error": _ERROR,
    "Mode": {
        "type": "string",
        "enum": ["queued", "inline", "spooled"],
        "description": "queued: in Redis for a worker; inline: run in the API process because Redis "
        "is unusable; spooled: kept in Postgres until Redis returns",
    },
    "JobError": {
        "type": "object",
        "required": ["type", "message", "kind"],
        "properties": {
            "type": {"type": "string"},
            "message": {"type": "string"},
            "kind": {"type": "string", "enum": ["transient", "permanent"]},
        },
    },
    "EnqueueResponse": {
        "type": "object",
        "required": ["job_id", "name", "mode", "duplicate"],
        "properties": {
            "job_id": {"type": "string"},
            "name": {"type": "string"},
            "mode": _ref("Mode"),
            "duplicate": {"type": "boolean"},
            "status": {
                "type": "string",
                "enum": ["complete", "failed", "pending"],
                "description": "with `wait` only",
            },
            "result": {"description": "with `wait`, when the job completed"},
            "error": _ref("JobError"),
        },
    },
    "BatchResponse": {
        "type": "object",
        "required": ["name", "jobs", "counts"],
        "properties": {
            "name": {"type": "string"},
            "jobs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["job_id", "mode", "duplicate"],
                    "properties": {
                        "job_id": {"type": "string"},
                        "mode": _ref("Mode"),
                        "duplicate": {"type": "boolean"},
                    },
                },
            },
            "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
        },
    },
    "JobStatus": {
        "type": "object",
        "required": ["job_id", "status"],
        "properties": {
            "job_id": {"type": "string"},
            "status": {
                "type": "string",
                "enum": [
                    *("spooled", "queued", "deferred", "in_progress", "complete", "failed", "cancelled"),
                    *("dead", "not_found", "unknown"),
                ],
            },
            "queue": {"type": "string", "description": "the queue it is in, or was run from"},
            "progress": {
                "type": "object",
                "description": "a running job's latest progress report",
                "properties": {
                    "fraction": {"type": "number", "minimum": 0, "maximum": 1},
                    "message": {"type": ["string", "null"]},
                    "at_ms": {"type": ["integer", "null"]},
                },
            },
            "job": {"type": "string", "description": "the job's name"},
            "mode": {"type": "string"},
            "tries": {"type": "integer"},
            "result": {},
            "error": _ref("JobError"),
            "enqueued_at": {"type": "string", "format": "date-time"},
            "started_at": {"type": "string", "format": "date-time"},
            "finished_at": {"type": "string", "format": "date-time"},
        },
    },
    "CancelResult": {
        "type": "object",
        "required": ["job_id", "outcome"],
        "properties": {
            "job_id": {"type": "string"},
            "outcome": {"type": "string", "enum": ["cancelled", "requested", "finished", "not_found"]},
        },
    },
    "QueueState": {
        "type": "object",
        "required": ["queue", "paused", "was_paused"],
        "properties": {
            "queue": {"type": "string"},
            "paused": {"type": "boolean"},
            "was_paused": {"type": "boolean"},
        },
    },
    "EventsRequest": {
        "type": "object",
        "required": ["events"],
        "additionalProperties": False,
        "properties": {
            "events": {
                "type": "array",
                "items": {"type": "object"},
                "description": "analytics events: type (play, stream, page_view, link_click, "
                "social_engagement, sale), artist_id, source, and optional track_id, occurred_at, "
                "quantity, amount_cents, properties, event_id",
            }
        },
    },
    "TrackResult": {
        "type": "object",
        "required": ["accepted", "refused", "errors"],
        "properties": {
            "accepted": {"type": "integer"},
            "refused": {"type": "integer"},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "index": {"type": "integer"},
                        "reason": {"type": "string"},
                        "event_id": {"type": ["string", "null"]},
                    },
                },
            },
            "stored_in": {"type": ["string", "null"], "enum": ["redis", "memory", None]},
        },
    },
    "Health": {"type": "object", "properties": {"status": {"type": "string"}}},
}

_ERRORS: dict[str, Any] = {
    "400": {"description": "the body is not JSON", "content": _json(_ref("Error"))},
    "401": {"description": "no bearer token, or not a valid one", "content": _json(_ref("Error"))},
    "403": {"description": "the token may not use this job", "content": _json(_ref("Error"))},
    "413": {"description": "the body is over API_MAX_BODY_BYTES", "content": _json(_ref("Error"))},
}


def _header(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "schema": {"type": "string"}, "description": description}


_TRACEPARENT = _header(
    "traceparent", "W3C Trace Context of the calling request; the job's log lines carry its trace id"
)
_IDEMPOTENCY_KEY = {**_header("Idempotency-Key", "the job id (same as body `job_id`)"), "schema": _JOB_ID}


def _job_paths(name: str, job: dict[str, Any]) -> dict[str, Any]:
    summary = job["description"] or name
    unknown_or_invalid = {
        "404": {"description": "no such job", "content": _json(_ref("Error"))},
        "422": {"description": "invalid arguments; `fields` names each one", "content": _json(_ref("Error"))},
        "503": {
            "description": "the job could be neither queued, spooled nor run (its fallback policy)",
            "content": _json(_ref("Error")),
        },
    }
    return {
        f"/v1/jobs/{name}": {
            "post": {
                "operationId": f"enqueue_{name}",
                "tags": ["jobs"],
                "summary": f"Enqueue {name}: {summary}",
                "parameters": [_IDEMPOTENCY_KEY, _TRACEPARENT],
                "requestBody": {"required": True, "content": _json(_ref(f"{name}_enqueue"))},
                "responses": {
                    "202": {"description": "accepted", "content": _json(_ref("EnqueueResponse"))},
                    "200": {
                        "description": "finished within `wait`",
                        "content": _json(_ref("EnqueueResponse")),
                    },
                    **_ERRORS,
                    **unknown_or_invalid,
                },
            }
        },
        f"/v1/jobs/{name}/batch": {
            "post": {
                "operationId": f"enqueue_many_{name}",
                "tags": ["jobs"],
                "summary": f"Enqueue many {name} jobs in one call",
                "parameters": [_TRACEPARENT],
                "requestBody": {"required": True, "content": _json(_ref(f"{name}_batch"))},
                "responses": {
                    "202": {
                        "description": "accepted, one entry per job in order",
                        "content": _json(_ref("BatchResponse")),
                    },
                    **_ERRORS,
                    **unknown_or_invalid,
                },
            }
        },
        f"/v1/jobs/{name}/validate": {
            "post": {
                "operationId": f"validate_{name}",
                "tags": ["jobs"],
                "summary": f"Check arguments for {name} (nothing queued); answers them as the job sees them",
                "requestBody": {
                    "required": True,
                    "content": _json({"type": "object", "properties": {"args": job["args"]}}),
                },
                "responses": {
                    "200": {
                        "description": "valid",
                        "content": _json({"type": "object", "properties": {"args": {"type": "object"}}}),
                    },
                    **_ERRORS,
                    "404": unknown_or_invalid["404"],
                    "422": unknown_or_invalid["422"],
                },
            }
        },
    }


def _request_schemas(name: str, job: dict[str, Any]) -> dict[str, Any]:
    return {
        f"{name}_enqueue": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "args": job["args"],
                "job_id": _JOB_ID,
                "defer_by": _DEFER_BY,
                "wait": _WAIT,
                "background": _BACKGROUND,
                "queue": _QUEUE,
            },
        },
        f"{name}_batch": {
            "type": "object",
            "additionalProperties": False,
            "required": ["jobs"],
            "properties": {
                "jobs": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"args": job["args"], "job_id": _JOB_ID},
                    },
                },
                "defer_by": _DEFER_BY,
                "background": _BACKGROUND,
                "queue": _QUEUE,
            },
        },
    }


def openapi_document(registry: Registry, *, version: str) -> dict[str, Any]:
    export = job_schemas(registry, ref_prefix=_REF)
    schemas: dict[str, Any] = {**_COMMON, **export["$defs"]}
    paths: dict[str, Any] = {}
    for name, job in export["jobs"].items():
        paths.update(_job_paths(name, job))
        schemas.update(_request_schemas(name, job))
    paths["/v1/jobs"] = {
        "get": {
            "operationId": "list_jobs",
            "tags": ["jobs"],
            "summary": "The registered jobs and their argument JSON Schemas (python -m worker jobs --schema)",
            "responses": {"200": {"description": "the schema export", "content": _json({"type": "object"})}},
        }
    }
    paths["/v1/jobs/{job_id}"] = {
        "get": {
            "operationId": "job_status",
            "tags": ["jobs"],
            "summary": "Where a job is: status, result or error, tries, mode",
            "parameters": [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {
                "200": {"description": "found", "content": _json(_ref("JobStatus"))},
                "404": {"description": "no such job (status not_found)", "content": _json(_ref("JobStatus"))},
                "503": {
                    "description": "Redis unreachable and nothing in Postgres",
                    "content": _json(_ref("JobStatus")),
                },
                "401": _ERRORS["401"],
                "403": _ERRORS["403"],
            },
        },
        "delete": {
            "operationId": "cancel_job",
            "tags": ["jobs"],
            "summary": "Cancel a job: a queued, deferred or spooled one is removed (status cancelled); "
            "a running one is asked to stop",
            "parameters": [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {
                "200": {
                    "description": "cancelled, requested or finished",
                    "content": _json(_ref("CancelResult")),
                },
                "404": {"description": "no such job", "content": _json(_ref("CancelResult"))},
                "503": {
                    "description": "Redis unreachable and the job not spooled",
                    "content": _json(_ref("Error")),
                },
                "401": _ERRORS["401"],
                "403": _ERRORS["403"],
            },
        },
    }
    for action in ("pause", "resume"):
        paths[f"/v1/queues/{{name}}/{action}"] = {
            "post": {
                "operationId": f"{action}_queue",
                "tags": ["queues"],
                "summary": "Stop workers claiming from a queue (jobs keep arriving)"
                if action == "pause"
                else "Let workers claim from a paused queue again",
                "parameters": [{"name": "name", "in": "path", "required": True, "schema": _QUEUE}],
                "responses": {
                    "200": {"description": "done", "content": _json(_ref("QueueState"))},
                    "401": _ERRORS["401"],
                    "403": _ERRORS["403"],
                },
            }
        }
    paths["/v1/events"] = {
        "post": {
            "operationId": "track_events",
            "tags": ["events"],
            "summary": "Record analytics events; invalid ones are refused with a reason, the rest accepted",
            "requestBody": {"required": True, "content": _json(_ref("EventsRequest"))},
            "responses": {
                "200": {"description": "counts", "content": _json(_ref("TrackResult"))},
                "503": {
                    "description": "the event buffer is full (Redis down for long)",
                    "content": _json(_ref("Error")),
                },
                **_ERRORS,
            },
        }
    }
    for path, summary in (("/healthz", "the process is alive"), ("/readyz", "the producer is started")):
        paths[path] = {
            "get": {
                "operationId": path.strip("/"),
                "tags": ["health"],
                "summary": summary,
                "security": [],
                "responses": {"200": {"description": "ok", "content": _json(_ref("Health"))}},
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Max Booster jobs API",
            "version": version,
            "description": "Enqueue background jobs of the Max Booster job runner. Arguments are validated "
            "with the same models as the Python producer; while Redis is down each job follows its "
            "fallback (run inline in the API process, kept in the Postgres spool, or refused).",
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "security": [{"bearer": []}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
