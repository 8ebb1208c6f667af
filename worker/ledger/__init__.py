"""Postgres bookkeeping: the ledger (spool, durable jobs, dead letters, inline outcomes), the
spool relay, the durable reconciler, and the schema migrations."""

from worker.ledger.ledger import PG_DOWN_ERRORS, DeadLetter, InlineOutcome, Ledger, SpooledJob
from worker.ledger.reconciler import DurableReconciler
from worker.ledger.relay import SpoolRelay

__all__ = [
    "PG_DOWN_ERRORS",
    "DeadLetter",
    "DurableReconciler",
    "InlineOutcome",
    "Ledger",
    "SpoolRelay",
    "SpooledJob",
]
