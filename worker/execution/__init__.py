"""One attempt of a job, shared by the worker's engine and the producer's inline executor, and
the one place its end is accounted for."""

from worker.execution.attempt import Attempt, AttemptRunner, backoff_delay
from worker.execution.outcomes import AttemptEnd, Outcomes

__all__ = ["Attempt", "AttemptEnd", "AttemptRunner", "Outcomes", "backoff_delay"]
