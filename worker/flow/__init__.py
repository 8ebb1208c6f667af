"""Flow control: which queues a worker consumes and in what order, the caps on how many jobs of
a queue run at once, the rate limits shared by every worker, and the side channel of running
jobs (progress reports out, cancel requests in)."""

from worker.flow.cancels import CancelWatcher
from worker.flow.progress import ProgressWriter
from worker.flow.queues import QueuePlan
from worker.flow.ratelimit import LocalLimiter, RateLimits, SharedLimiter

__all__ = ["CancelWatcher", "LocalLimiter", "ProgressWriter", "QueuePlan", "RateLimits", "SharedLimiter"]
