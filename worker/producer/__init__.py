"""The producer: the public API the web app calls (`Producer`, `JobHandle`), the routing
decision (queue, spool, inline, reject), the inline executor and the tracker of enqueues whose
reply was lost."""

from worker.producer.facade import JobRef, Producer
from worker.producer.handle import JobHandle

__all__ = ["JobHandle", "JobRef", "Producer"]
