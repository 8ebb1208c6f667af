"""The dashboard's masking: the shared rules of `worker.telemetry.masking` (Sentry reports use
them too)."""

from worker.telemetry.masking import MASK, Masker

__all__ = ["MASK", "Masker"]
