"""The one codec for job and result records: JSON on the wire, never pickle.

Records keep arq's layout, so arq's `Job` API reads our jobs:

- a job record is `{"t": try or null, "f": job name, "a": [], "k": {kwargs}, "et": enqueue ms}`,
  plus `"tp"`, the W3C `traceparent` of the request that enqueued it, when there was one;
- a result record adds `"s"` (success), `"r"` (the value, or for a failure
  `{"__error__": {"type", "message", "kind"}}`), `"st"` / `"ft"` (start and finish ms), `"q"`
  (queue) and `"id"` (job id).

Nothing written to Redis can make a process execute code: a record is data, decoded by orjson
and checked field by field. `decode_job` and `decode_result` raise `CodecError` for anything
that is not a record we would have written.

Signing (JOB_SIGNING_KEYS): a signed record ends in `,"sg":"<hex>"}`, the HMAC-SHA256 of the job
id, a newline and the record without that last field; the record stays JSON that arq reads.
`sign` appends it; `verify` checks it against every key (the first one signs, the others are
for rotation) without re-serializing anything.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson
from pydantic import BaseModel

from core.clock import epoch_ms
from core.errors import JobFailed, JobValidationError, PermanentError

__all__ = [
    "ERROR_KEY",
    "JOB_ID_RULE",
    "MAX_DEPTH",
    "PICKLED_JOB",
    "CodecError",
    "JobRecord",
    "ResultRecord",
    "Signature",
    "check_job_id",
    "decode_job",
    "decode_result",
    "encode_job",
    "encode_result",
    "error_from_value",
    "failure_value",
    "json_value",
    "sign",
    "too_deep",
    "valid_traceparent",
    "verify",
]

ERROR_KEY = "__error__"
# orjson writes at most 254 levels of nesting; a record we read must be one we could write back
# (as the result record, which carries the same arguments at the same depth).
MAX_DEPTH = 254
# Job ids: 1-200 characters of letters, digits and _ . : @ / + = - (the claim quarantines others).
JOB_ID_RULE = "1-200 characters of letters, digits and _ . : @ / + = -"
_JOB_ID = re.compile(r"^[A-Za-z0-9_.:@/+=-]{1,200}$")
# Enqueue times outside [epoch, year 5138] are forged or broken; such a record is treated as
# enqueued now rather than refused (arq writes what its callers give it).
_MAX_PLAUSIBLE_MS = 10**14


class Signature(StrEnum):
    VALID = "valid"
    MISSING = "missing"
    INVALID = "invalid"


_SG_HEAD, _SG_TAIL = b',"sg":"', b'"}'
_SG_LENGTH = len(_SG_HEAD) + 64 + len(_SG_TAIL)


def _mac(key: bytes, job_id: str, body: bytes) -> bytes:
    return hmac.new(key, job_id.encode() + b"\n" + body, hashlib.sha256).hexdigest().encode()


def sign(record: bytes, job_id: str, key: bytes) -> bytes:
    """`record` (a JSON object we wrote) with its signature as the last field."""
    return record[:-1] + _SG_HEAD + _mac(key, job_id, record) + _SG_TAIL


def verify(record: bytes, job_id: str, keys: Sequence[bytes]) -> Signature:
    """Whether `record` carries a signature of `job_id` and its content by one of `keys`."""
    tail = record[-_SG_LENGTH:]
    if not (tail.startswith(_SG_HEAD) and tail.endswith(_SG_TAIL)):
        return Signature.INVALID if b'"sg"' in record else Signature.MISSING
    body = record[:-_SG_LENGTH] + b"}"
    given = tail[len(_SG_HEAD) : -len(_SG_TAIL)]
    ok = any(hmac.compare_digest(_mac(key, job_id, body), given) for key in keys)
    return Signature.VALID if ok else Signature.INVALID


class CodecError(ValueError):
    """Bytes that are not a record we write; `error_type` names the class of problem."""

    def __init__(self, message: str, error_type: str = "DeserializationError") -> None:
        super().__init__(message)
        self.error_type = error_type


@dataclass(slots=True)  # not frozen: made per job, and frozen init costs ~0.3 µs a field
class JobRecord:
    name: str
    kwargs: dict[str, Any]
    enqueue_ms: int
    job_try: int | None = None
    traceparent: str | None = None


@dataclass(slots=True)  # not frozen: made per job, and frozen init costs ~0.3 µs a field
class ResultRecord:
    job_id: str
    name: str
    kwargs: dict[str, Any]
    job_try: int
    success: bool
    value: Any  # the job's JSON result, or for a failure the error dict
    enqueue_ms: int
    start_ms: int
    finish_ms: int
    queue: str
    traceparent: str | None = None

    @property
    def error(self) -> dict[str, Any] | None:
        """The structured error of a failed job (`type`, `message`, `kind`), else None."""
        if self.success:
            return None
        return error_from_value(self.value) or {
            "type": "Error",
            "message": str(self.value),
            "kind": "permanent",
        }


# W3C Trace Context: version-trace id-parent id-flags, lowercase hex.
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


def valid_traceparent(value: object) -> bool:
    """A well-formed W3C `traceparent` (an all-zero trace or parent id is invalid, as the spec says)."""
    return (
        isinstance(value, str)
        and _TRACEPARENT.match(value) is not None
        and value[3:35] != "0" * 32
        and value[36:52] != "0" * 16
        and value[:2] != "ff"
    )


def encode_job(
    name: str,
    kwargs: dict[str, Any],
    *,
    enqueue_ms: int,
    job_try: int | None = None,
    traceparent: str | None = None,
) -> bytes:
    record: dict[str, Any] = {"t": job_try, "f": name, "a": [], "k": kwargs, "et": enqueue_ms}
    if traceparent is not None:
        record["tp"] = traceparent
    return orjson.dumps(record)


def check_job_id(job_id: str) -> None:
    """Raise `JobValidationError` unless `job_id` follows the job-id rule."""
    if not isinstance(job_id, str) or not _JOB_ID.match(job_id):
        shown = repr(job_id) if len(str(job_id)) <= 60 else repr(str(job_id)[:57] + "...")
        raise JobValidationError(f"job_id: {shown} is not a valid job id; use {JOB_ID_RULE}")


def too_deep(raw: bytes) -> bool:
    """Whether JSON text nests deeper than `MAX_DEPTH` (cheap unless it has many brackets)."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return False
    try:
        orjson.dumps(orjson.loads(raw))
    except (orjson.JSONDecodeError, TypeError):
        return True
    return False


def _load_object(raw: bytes, what: str) -> dict[str, Any]:
    if too_deep(raw):
        raise CodecError(f"unable to deserialize {what}: nested deeper than {MAX_DEPTH} levels")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CodecError(f"unable to deserialize {what}: {exc}") from None
    if not isinstance(value, dict):
        raise CodecError(f"unable to deserialize {what}: not a JSON object")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Pickle protocols 2-5 start with PROTO (0x80) and the protocol number: what plain arq writes.
_PICKLE_MAGIC = re.compile(rb"\x80[\x02-\x05]")
PICKLED_JOB = (
    "the job record is a Python pickle, not JSON: a plain arq producer (or another pickle-based "
    "client) enqueued it on this queue; it was not unpickled (that could run code) and not run"
)


def decode_job(raw: bytes) -> JobRecord:
    """A job record we wrote; `CodecError` for anything else (a pickle, a forged shape)."""
    if _PICKLE_MAGIC.match(raw):
        raise CodecError(PICKLED_JOB)
    record = _load_object(raw, "job")
    name, kwargs, args, job_try = record.get("f"), record.get("k"), record.get("a"), record.get("t")
    if not isinstance(name, str) or not isinstance(kwargs, dict):
        raise CodecError("unable to deserialize job: not an arq job record")
    if args:
        raise CodecError("jobs take keyword arguments only", "JobExecutionFailed")
    if job_try is not None and not _is_int(job_try):
        raise CodecError(f"unable to deserialize job: try {job_try!r} is not a whole number")
    enqueued = record.get("et")
    if (
        not isinstance(enqueued, int | float)
        or isinstance(enqueued, bool)
        or not 0 <= enqueued < _MAX_PLAUSIBLE_MS
    ):
        enqueued = epoch_ms()
    traceparent = record.get("tp")
    return JobRecord(
        name, kwargs, int(enqueued), job_try, traceparent if valid_traceparent(traceparent) else None
    )


# Python's small-object allocator serves objects up to 512 bytes, a bytes object's header included.
_SMALL_OBJECT_BYTES = 512 - sys.getsizeof(b"")


def encode_result(result: ResultRecord) -> bytes:
    """arq's result record (so arq's `Job.result_info` reads it), as JSON."""
    value = result.value
    if not result.success and error_from_value(value) is None:
        value = {ERROR_KEY: {"type": "Error", "message": str(value), "kind": "permanent"}}
    record = {
        "t": result.job_try,
        "f": result.name,
        "a": [],
        "k": result.kwargs,
        "et": result.enqueue_ms,
        "s": result.success,
        "r": value,
        "st": result.start_ms,
        "ft": result.finish_ms,
        "q": result.queue,
        "id": result.job_id,
    }
    if result.traceparent is not None:
        record["tp"] = result.traceparent
    return _compact(orjson.dumps(record, option=orjson.OPT_NON_STR_KEYS))


def _compact(out: bytes) -> bytes:
    """A small output of orjson copied into a bytes object of its own size.

    orjson writes into a 4 KiB buffer from the C heap and then shrinks it in place. A result
    waits there for its batched write, a few hundred of them at once in a draining worker, and
    each pins its 4 KiB slot's remains: the worker's heap grew by 6 MiB over 100,000 jobs
    (bench_worker's memory row). The copy, for Python's small-object allocator, lets the buffer
    go at once: 0.1 µs a job, and the growth is under 1 MiB."""
    return memoryview(out).tobytes() if len(out) <= _SMALL_OBJECT_BYTES else out


def failure_value(error: JobFailed) -> dict[str, Any]:
    """What a failed job stores as its result value."""
    return {ERROR_KEY: error.to_dict()}


def decode_result(raw: bytes, job_id: str = "") -> ResultRecord:
    """A result record; `CodecError` when it is not one."""
    record = _load_object(raw, "result")
    success = record.get("s")
    if not isinstance(success, bool) or not isinstance(record.get("f"), str):
        raise CodecError("unable to deserialize result: not an arq result record")

    def ms(field: str) -> int:
        value = record.get(field)
        return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0

    kwargs = record.get("k")
    job_try = record.get("t")
    return ResultRecord(
        job_id=str(record.get("id") or job_id),
        name=record["f"],
        kwargs=kwargs if isinstance(kwargs, dict) else {},
        job_try=job_try if isinstance(job_try, int) and not isinstance(job_try, bool) else 0,
        success=success,
        value=record.get("r"),
        enqueue_ms=ms("et"),
        start_ms=ms("st"),
        finish_ms=ms("ft"),
        queue=str(record.get("q") or ""),
        traceparent=record["tp"] if valid_traceparent(record.get("tp")) else None,
    )


def error_from_value(value: Any) -> dict[str, Any] | None:
    """The structured error stored for a failed job, or None if `value` is not one."""
    if isinstance(value, dict) and isinstance(value.get(ERROR_KEY), dict):
        return dict(value[ERROR_KEY])
    return None


def _json_default(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def json_value(value: Any) -> Any:
    """`value` as a caller will read it back (a JSON round trip); a value JSON cannot carry is a
    `PermanentError` (the job returned something it should not have)."""
    try:
        return orjson.loads(orjson.dumps(value, default=_json_default, option=orjson.OPT_NON_STR_KEYS))
    except TypeError as exc:
        raise PermanentError(f"the job's result is not JSON-serializable: {exc}") from None
