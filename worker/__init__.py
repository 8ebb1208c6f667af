"""The Max Booster job runner: the producer the web app calls, and the worker.

    from worker import Producer

Layout: `backend` (Redis), `ledger` (Postgres bookkeeping), `execution` (one attempt and its
outcome), `producer`, `engine` (the worker), `telemetry` (logs, metrics), `ops` (CLI, doctor,
stats, health). Jobs and their registry live in `jobs`, over the neutral `core`.

The names below are loaded when first asked for (PEP 562), not when the package is: every
`python -m worker ...` imports this package first, and `--help` should not wait for the producer,
redis-py and the job families. `from worker import Producer` works as any import does.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.errors import EnqueueError, JobFailed, JobValidationError, PermanentError, TransientError
    from worker.producer import JobHandle, Producer

__all__ = [
    "EnqueueError",
    "JobFailed",
    "JobHandle",
    "JobValidationError",
    "PermanentError",
    "Producer",
    "TransientError",
]

_HOMES = {
    "EnqueueError": "core.errors",
    "JobFailed": "core.errors",
    "JobValidationError": "core.errors",
    "PermanentError": "core.errors",
    "TransientError": "core.errors",
    "JobHandle": "worker.producer",
    "Producer": "worker.producer",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'worker' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # once: later lookups do not come here
    return value
