"""The weekly insights job: one summary and one digest email per artist and ISO week.

For each artist with a contact who wants the digest and any activity in the week or the one
before: totals per event type with the change on the previous week, sales, top tracks, top
sources and open alerts. The email's job id (and idempotency key) is
`weekly-insights:{artist}:{iso week}`, and a row in `analytics_digests` records it once
queued, so running the job twice sends one digest per artist.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import orjson

from core.context import JobContext
from core.deps import POSTGRES
from core.enqueue import ENQUEUE
from core.errors import PermanentError
from jobs.analytics.notify import Contact, send_email
from jobs.analytics.rollup import rollup_days

__all__ = ["build_summaries", "iso_week_bounds", "send_weekly_insights"]

_ARTISTS_PER_BATCH = 200
_TOP = 5

_DUE = """
SELECT c.artist_id, c.email, c.name FROM analytics_contacts c
WHERE c.weekly_insights AND c.artist_id > $1
  AND NOT EXISTS (SELECT 1 FROM analytics_digests g WHERE g.artist_id = c.artist_id AND g.iso_week = $2)
  AND EXISTS (SELECT 1 FROM analytics_daily d WHERE d.artist_id = c.artist_id AND d.day BETWEEN $3 AND $4)
ORDER BY c.artist_id LIMIT $5
"""
# $2 is the Monday of the week reported on; days before it are the previous week.
_TOTALS = """
SELECT artist_id, event_type,
       coalesce(sum(quantity) FILTER (WHERE day >= $2), 0) AS this_week,
       coalesce(sum(quantity) FILTER (WHERE day < $2), 0) AS last_week,
       coalesce(sum(amount_cents) FILTER (WHERE day >= $2), 0) AS cents_this_week,
       coalesce(sum(amount_cents) FILTER (WHERE day < $2), 0) AS cents_last_week
FROM analytics_daily
WHERE artist_id = ANY($1::text[]) AND day BETWEEN $3 AND $4
GROUP BY artist_id, event_type
"""
_TOP_TRACKS = """
SELECT artist_id, track_id, listens FROM (
    SELECT artist_id, track_id, sum(quantity) AS listens,
           row_number() OVER (PARTITION BY artist_id ORDER BY sum(quantity) DESC, track_id) AS rank
    FROM analytics_daily
    WHERE artist_id = ANY($1::text[]) AND day BETWEEN $2 AND $3
      AND track_id <> '' AND event_type IN ('play', 'stream')
    GROUP BY artist_id, track_id
) ranked WHERE rank <= $4 ORDER BY artist_id, rank
"""
_TOP_SOURCES = """
SELECT artist_id, source, events FROM (
    SELECT artist_id, source, sum(quantity) AS events,
           row_number() OVER (PARTITION BY artist_id ORDER BY sum(quantity) DESC, source) AS rank
    FROM analytics_daily
    WHERE artist_id = ANY($1::text[]) AND day BETWEEN $2 AND $3
    GROUP BY artist_id, source
) ranked WHERE rank <= $4 ORDER BY artist_id, rank
"""
_OPEN_ALERTS = """
SELECT artist_id, day, kind, metric, track_id, observed, expected FROM analytics_alerts
WHERE artist_id = ANY($1::text[]) AND status = 'open' AND day <= $2
ORDER BY artist_id, day DESC, alert_id
"""
_RECORD = """
INSERT INTO analytics_digests (artist_id, iso_week, job_id, summary) VALUES ($1, $2, $3, $4::jsonb)
ON CONFLICT (artist_id, iso_week) DO NOTHING
"""


def iso_week_bounds(week: str) -> tuple[date, date]:
    """Monday and Sunday of an ISO week such as '2025-W14'."""
    try:
        year, number = week.split("-W")
        monday = date.fromisocalendar(int(year), int(number), 1)
    except ValueError:
        raise PermanentError(f"week {week!r} is not an ISO week; use YYYY-Www, e.g. 2025-W14") from None
    return monday, monday + timedelta(days=6)


def _last_week(today: date) -> str:
    year, week, _ = (today - timedelta(days=7)).isocalendar()
    return f"{year}-W{week:02d}"


def _change(this: float, last: float) -> float | None:
    return None if last == 0 else round((this - last) / last * 100, 1)


async def build_summaries(pool: asyncpg.Pool, artists: list[str], monday: date) -> dict[str, dict[str, Any]]:
    """The week's summary for each of `artists` (JSON-ready)."""
    sunday = monday + timedelta(days=6)
    previous = monday - timedelta(days=7)
    out: dict[str, dict[str, Any]] = {
        a: {"totals": {}, "sales_cents": None, "top_tracks": [], "top_sources": [], "open_alerts": []}
        for a in artists
    }
    cents: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for row in await pool.fetch(_TOTALS, artists, monday, previous, sunday):
        this, last = int(row["this_week"]), int(row["last_week"])
        out[row["artist_id"]]["totals"][row["event_type"]] = {
            "this_week": this,
            "last_week": last,
            "change_pct": _change(this, last),
        }
        if row["event_type"] == "sale":
            cents[row["artist_id"]] = [int(row["cents_this_week"]), int(row["cents_last_week"])]
    for artist, (this, last) in cents.items():
        out[artist]["sales_cents"] = {"this_week": this, "last_week": last, "change_pct": _change(this, last)}
    for row in await pool.fetch(_TOP_TRACKS, artists, monday, sunday, _TOP):
        out[row["artist_id"]]["top_tracks"].append(
            {"track_id": row["track_id"], "listens": int(row["listens"])}
        )
    for row in await pool.fetch(_TOP_SOURCES, artists, monday, sunday, _TOP):
        out[row["artist_id"]]["top_sources"].append({"source": row["source"], "events": int(row["events"])})
    for row in await pool.fetch(_OPEN_ALERTS, artists, sunday):
        out[row["artist_id"]]["open_alerts"].append(
            {
                "day": row["day"].isoformat(),
                "kind": row["kind"],
                "metric": row["metric"],
                "track_id": row["track_id"] or None,
                "observed": row["observed"],
                "expected": row["expected"],
            }
        )
    return out


def _digest_text(contact: Contact, week: str, summary: dict[str, Any]) -> str:
    lines = [f"Hi {contact.name or 'there'},", "", f"Your week {week} on Max Booster:", ""]
    for event_type, figures in sorted(summary["totals"].items()):
        change = figures["change_pct"]
        trend = "" if change is None else f" ({change:+.1f}% on the week before)"
        lines.append(f"- {event_type.replace('_', ' ')}: {figures['this_week']:,}{trend}")
    if summary["sales_cents"]:
        lines.append(f"- sales revenue: {summary['sales_cents']['this_week'] / 100:,.2f}")
    if summary["top_tracks"]:
        tracks = ", ".join(f"{t['track_id']} ({t['listens']:,})" for t in summary["top_tracks"])
        lines += ["", f"Top tracks: {tracks}"]
    if summary["top_sources"]:
        lines.append("Top sources: " + ", ".join(s["source"] for s in summary["top_sources"]))
    if summary["open_alerts"]:
        lines += ["", f"Open alerts: {len(summary['open_alerts'])} (see your analytics dashboard)"]
    lines += ["", "The Max Booster team", ""]
    return "\n".join(lines)


async def send_weekly_insights(ctx: JobContext, *, week: str | None = None) -> dict[str, Any]:
    """Queue one weekly insights email per artist for `week` (default: last ISO week)."""
    week = week or _last_week(datetime.now(UTC).date())
    monday, sunday = iso_week_bounds(week)
    pool = await ctx.deps.get(POSTGRES)
    enqueue = await ctx.deps.get(ENQUEUE)
    await rollup_days(pool)
    counts = {"queued": 0, "refused": 0}
    cursor = ""
    while rows := await pool.fetch(
        _DUE, cursor, week, monday - timedelta(days=7), sunday, _ARTISTS_PER_BATCH
    ):
        cursor = rows[-1]["artist_id"]
        summaries = await build_summaries(pool, [row["artist_id"] for row in rows], monday)
        for row in rows:
            contact = Contact(row["artist_id"], row["email"], row["name"])
            summary = {"artist_id": contact.artist_id, "week": week, **summaries[contact.artist_id]}
            job_id = f"weekly-insights:{contact.artist_id}:{week}"
            outcome = await send_email(
                enqueue,
                contact,
                subject=f"Your week on Max Booster ({week})",
                text=_digest_text(contact, week, summary),
                job_id=job_id,
            )
            if outcome is None:
                ctx.log.warning("weekly insights email refused", artist_id=contact.artist_id)
            counts["queued" if outcome else "refused"] += 1
            await pool.execute(
                _RECORD, contact.artist_id, week, job_id if outcome else None, orjson.dumps(summary).decode()
            )
    return {"week": week, **counts}
