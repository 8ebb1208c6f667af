"""JSON on the wire, never pickle.

arq serializes a job as a dict (function, args, kwargs, try, enqueue time) and a result as a
dict whose `r` is the return value or, for a failure, the exception. We encode both with
orjson; an exception becomes `{"__error__": {"type", "message", "kind"}}` so `status` can read
it and nothing written to Redis can make a process execute code.
"""

from __future__ import annotations

from typing import Any

import orjson

from worker.errors import JobFailed, classify

__all__ = ["ERROR_KEY", "deserialize", "error_from_payload", "serialize"]

ERROR_KEY = "__error__"


def _default(obj: Any) -> Any:
    if isinstance(obj, JobFailed):
        return {ERROR_KEY: obj.to_dict()}
    if isinstance(obj, BaseException):
        # arq's own failures (expired, not found, bad payload) arrive here as exceptions.
        kind = classify(obj) if isinstance(obj, Exception) else "permanent"
        return {ERROR_KEY: {"type": type(obj).__name__, "message": str(obj), "kind": kind}}
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def serialize(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj, default=_default, option=orjson.OPT_NON_STR_KEYS)


def deserialize(data: bytes) -> dict[str, Any]:
    value = orjson.loads(data)
    if not isinstance(value, dict):
        raise ValueError("job payload is not a JSON object")
    return value


def error_from_payload(value: Any) -> dict[str, Any] | None:
    """The structured error stored for a failed job, or None if `value` is not one."""
    if isinstance(value, dict) and isinstance(value.get(ERROR_KEY), dict):
        return dict(value[ERROR_KEY])
    return None
