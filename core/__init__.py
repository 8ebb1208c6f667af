"""The neutral core: what jobs and the runner share, importing neither.

- `core.errors`: the error taxonomy (permanent / transient, validation, the backend's errors);
- `core.registry`: job definitions (`define`), schedules and the `Registry`;
- `core.context`: `JobContext`, what a running job receives;
- `core.deps`: shared resources built lazily from one lifespan (`Deps`, `Resource`, `POSTGRES`);
- `core.enqueue`: the `ENQUEUE` seam through which a job queues another;
- `core.plugin`: how a job family attaches behaviour to the producer and the worker;
- `core.codec`: the job and result records on the wire.

A job module imports from here (and `settings`) only.
"""

from core.context import JobContext, Mode
from core.deps import POSTGRES, Deps, Resource
from core.errors import JobValidationError, PermanentError, TransientError
from core.registry import JobDefinition, Registry, Schedule, define

__all__ = [
    "POSTGRES",
    "Deps",
    "JobContext",
    "JobDefinition",
    "JobValidationError",
    "Mode",
    "PermanentError",
    "Registry",
    "Resource",
    "Schedule",
    "TransientError",
    "define",
]
