"""Dead letters for ops: `python -m worker dead list | show ID | retry ID|--all | purge`.

A job that failed permanently or ran out of tries is kept in the ledger with its name,
arguments, error, tries and timestamps, queued and inline alike. Retrying enqueues it again
under a new job id (the old id's failed result may still be in Redis) and removes the letter.
"""

from __future__ import annotations

from typing import Any

from worker.ledger import DeadLetter
from worker.producer import Producer

__all__ = ["dead_letter_row", "retry_dead"]


def dead_letter_row(letter: DeadLetter, *, full: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "job_id": letter.job_id,
        "job": letter.name,
        "mode": letter.mode,
        "tries": letter.tries,
        "failed_at": letter.failed_at.isoformat(),
        "error": letter.error,
    }
    if full:
        out["args"] = letter.kwargs
        out["enqueued_at"] = letter.enqueued_at.isoformat() if letter.enqueued_at else None
    return out


async def retry_dead(producer: Producer, job_ids: list[str] | None) -> list[dict[str, Any]]:
    """Enqueue dead jobs again (all of them when `job_ids` is None); report where each went."""
    ledger = producer.ledger
    letters = (
        await ledger.all_dead_letters() if job_ids is None else await ledger.dead_letters(job_ids=job_ids)
    )
    report = []
    for letter in letters:
        handle = await producer.enqueue_job(letter.name, letter.kwargs, background=True)
        await ledger.forget_dead_letter(letter.job_id)
        report.append({"dead_job_id": letter.job_id, "job_id": handle.job_id, "mode": handle.mode})
    return report
