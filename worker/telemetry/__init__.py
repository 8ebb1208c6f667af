"""What a process tells about itself: logging (configured once at the entry point), Prometheus
metrics and the recent per-job counts that `stats` reads."""

from worker.telemetry.logs import configure_logging
from worker.telemetry.metrics import Metrics
from worker.telemetry.recent import RecentCounts

__all__ = ["Metrics", "RecentCounts", "configure_logging"]
