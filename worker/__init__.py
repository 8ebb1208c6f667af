"""The Max Booster job runner: producer shim, inline runner and arq worker.

The web app imports `Producer` from here. Names are loaded on first use so that `jobs` can
import `worker.errors` without pulling in the producer (which imports the job registry).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "EnqueueError",
    "JobFailed",
    "JobHandle",
    "JobValidationError",
    "PermanentError",
    "Producer",
    "TransientError",
]

if TYPE_CHECKING:
    from worker.errors import EnqueueError, JobFailed, JobValidationError, PermanentError, TransientError
    from worker.producer import JobHandle, Producer


def __getattr__(name: str) -> Any:
    if name in ("JobHandle", "Producer"):
        from worker import producer

        return getattr(producer, name)
    if name in __all__:
        from worker import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
