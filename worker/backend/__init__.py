"""The queue backend: the only code that talks to Redis.

`QueueBackend` (in `protocol`) is the typed interface; `RedisBackend` its implementation over
`RedisLink` (connection, breaker, pipelined commands), the Lua `scripts` and the `keys`.
"""

from worker.backend.cache import HybridCache, MemoryCache, make_cache
from worker.backend.link import LinkState
from worker.backend.protocol import (
    CancelOutcome,
    ClaimBatch,
    ClaimedJob,
    ClaimQueue,
    CommandStats,
    EnqueueReply,
    Finished,
    JobState,
    JobView,
    NewJob,
    PoisonEntry,
    Presence,
    QueueBackend,
    QueueCounts,
    ServerInfo,
    WithdrawOutcome,
)
from worker.backend.redis_backend import RedisBackend

__all__ = [
    "CancelOutcome",
    "ClaimBatch",
    "ClaimQueue",
    "ClaimedJob",
    "CommandStats",
    "EnqueueReply",
    "Finished",
    "HybridCache",
    "JobState",
    "JobView",
    "LinkState",
    "MemoryCache",
    "NewJob",
    "PoisonEntry",
    "Presence",
    "QueueBackend",
    "QueueCounts",
    "RedisBackend",
    "ServerInfo",
    "WithdrawOutcome",
    "make_cache",
]
