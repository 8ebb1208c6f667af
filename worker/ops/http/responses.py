"""JSON in and out: orjson responses, the one error shape, and a request body read under a limit.

Every error the API answers has the body `{"error": {"code", "message", "fields"?}}`: `code` is
stable and machine-readable, `message` says what was wrong and how to fix it, and `fields`
(for 422) lists `{"field", "problem"}` pairs, e.g. `{"field": "args.message.to.0.email",
"problem": "value is not a valid email address: ..."}`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

__all__ = ["ApiError", "json_response", "json_type", "read_json_object"]


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    names: dict[type, str] = {str: "string", list: "array", dict: "object"}
    return names.get(type(value), type(value).__name__)


def json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status, headers=headers, media_type="application/json")


class ApiError(Exception):
    """An answer other than success; turned into a JSON error response by the app."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        fields: Sequence[Mapping[str, str]] = (),
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = list(fields)
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def response(self) -> Response:
        error: dict[str, Any] = {"code": self.code, "message": self.message, **self.extra}
        if self.fields:
            error["fields"] = self.fields
        return json_response({"error": error}, self.status, self.headers)


def _too_large(size: int | str, limit: int) -> ApiError:
    return ApiError(
        413,
        "body_too_large",
        f"the request body is {size} bytes, over the {limit}-byte limit (API_MAX_BODY_BYTES); "
        "send fewer jobs or events per call, or pass ids and load the data in the job",
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "bad_request", "Content-Length is not a number")
        if int(declared) > limit:
            raise _too_large(declared, limit)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(f"more than {limit}", limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json_object(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object (400 when it is not JSON, 422 when not an object)."""
    body = await read_body(request, limit)
    try:
        value = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ApiError(
            422,
            "invalid_body",
            "the request body must be a JSON object",
            fields=[{"field": "(body)", "problem": f"is a JSON {json_type(value)}, not an object"}],
        )
    return value
