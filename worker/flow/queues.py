"""The queues one worker consumes, and the order each claim visits them in.

Strict priority (`WORKER_QUEUES=critical,default,bulk,ai`, the default): every claim takes from
`critical` first and from `ai` only what the others leave. Urgent work never waits behind bulk
work, and the volume of urgent work (password resets, receipts) is small, so the lower queues
are not starved in practice; caps keep slow queues from filling every slot. Weighted
(`critical:6,default:3,bulk:1`): each claim visits the queues in a random order drawn by weight,
so every queue progresses under sustained load on the others, at the price of urgent jobs
sometimes being claimed second. These are Sidekiq's two modes, for the same reasons.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from core.flow import DEFAULT_QUEUE, queue_key
from settings import Settings
from worker.backend import ClaimQueue

__all__ = ["QueuePlan"]


@dataclass(frozen=True, slots=True)
class _Queue:
    name: str
    key: str
    weight: int | None
    cap: int | None
    global_cap: int | None


class QueuePlan:
    """A worker's queues with their caps; `claim_order` says what the next claim may take."""

    def __init__(self, settings: Settings) -> None:
        caps, global_caps = settings.queue_caps, settings.queue_global_caps
        self._queues = [
            _Queue(name, queue_key(settings, name), weight, caps.get(name), global_caps.get(name))
            for name, weight in settings.worker_queue_weights.items()
        ]
        self.weighted = any(q.weight is not None for q in self._queues)
        self.names = [q.name for q in self._queues]
        self.keys = [q.key for q in self._queues]
        self.name_of = {q.key: q.name for q in self._queues}
        # A finished job of a capped queue frees a slot, so its workers are woken.
        self.capped = frozenset(q.key for q in self._queues if q.cap is not None or q.global_cap is not None)
        self.globally_capped = frozenset(q.key for q in self._queues if q.global_cap is not None)
        self._rng = random.Random()

    @property
    def health_key_queue(self) -> str:
        """The queue whose arq health key this worker writes: `default` (QUEUE_NAME, where
        arq's tools look) when it consumes it, else its first queue."""
        return next((q.key for q in self._queues if q.name == DEFAULT_QUEUE), self._queues[0].key)

    def claim_order(self, running: Counter[str]) -> list[ClaimQueue]:
        """The queues for the next claim, in the order to visit them, each with what this
        worker may still start of it."""
        queues = self._queues if not self.weighted else self._draw()
        return [
            ClaimQueue(q.key, None if q.cap is None else max(q.cap - running[q.key], 0), q.global_cap)
            for q in queues
        ]

    def _draw(self) -> list[_Queue]:
        """A weighted random order: each next queue drawn with probability proportional to its
        weight among those left."""
        left = list(self._queues)
        order = []
        while left:
            pick = self._rng.choices(left, weights=[q.weight or 1 for q in left])[0]
            order.append(pick)
            left.remove(pick)
        return order
