"""The anomaly job: score recent days of every artist's and track's daily series, store alerts,
and email the artist about each new one.

Series are (artist, track, event type) quantities per day, plus the artist's total over all
tracks (track ''). Only whole days are judged: today is never scored, it is not over. Alerts
are unique per series and day, so a re-run finds nothing new; an alert is emailed until its
`notified_at` is set, with a job id derived from the alert, so a crash between the two sends
no second email.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from core.context import JobContext
from core.deps import POSTGRES
from core.enqueue import ENQUEUE
from jobs.analytics.anomaly import DetectorConfig, Finding, scan_series
from jobs.analytics.notify import Contact, send_email
from jobs.analytics.rollup import rollup_days
from settings import Settings

__all__ = ["detect_analytics_anomalies", "notify_new_alerts"]

_ARTISTS_PER_BATCH = 200
_ALERTS_PER_BATCH = 200

_ARTISTS = """
SELECT DISTINCT artist_id FROM analytics_daily
WHERE day BETWEEN $1 AND $2 AND artist_id > $3
ORDER BY artist_id LIMIT $4
"""
# Track series, and each artist's total over tracks (GROUPING(track_id) = 1 -> track '').
_SERIES = """
SELECT artist_id,
       CASE WHEN GROUPING(track_id) = 1 THEN '' ELSE track_id END AS track_id,
       event_type, day, sum(quantity)::float8 AS quantity
FROM analytics_daily
WHERE artist_id = ANY($1::text[]) AND day BETWEEN $2 AND $3
GROUP BY GROUPING SETS ((artist_id, event_type, day), (artist_id, track_id, event_type, day))
HAVING GROUPING(track_id) = 1 OR track_id <> ''
"""
_SAVE = """
INSERT INTO analytics_alerts (artist_id, track_id, metric, day, kind, observed, expected, score)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::date[], $5::text[],
                     $6::float8[], $7::float8[], $8::float8[])
ON CONFLICT (artist_id, track_id, metric, day) DO NOTHING
"""
_UNNOTIFIED = """
SELECT a.alert_id, a.artist_id, a.track_id, a.metric, a.day, a.kind, a.observed, a.expected,
       c.email, c.name, coalesce(c.anomaly_alerts, false) AS wanted
FROM analytics_alerts a LEFT JOIN analytics_contacts c USING (artist_id)
WHERE a.notified_at IS NULL
ORDER BY a.alert_id LIMIT $1
"""
_MARK_NOTIFIED = "UPDATE analytics_alerts SET notified_at = now(), email_job_id = $2 WHERE alert_id = $1"

SeriesKey = tuple[str, str, str]  # artist, track ('' for all tracks), event type


def _config(settings: Settings) -> DetectorConfig:
    return DetectorConfig(
        threshold=settings.analytics_anomaly_threshold,
        min_change=settings.analytics_anomaly_min_change,
        min_volume=settings.analytics_anomaly_min_volume,
        history_days=settings.analytics_anomaly_history_days,
        min_history_days=settings.analytics_anomaly_min_history_days,
    )


async def _artist_batches(pool: asyncpg.Pool, first: date, last: date) -> AsyncIterator[list[str]]:
    cursor = ""
    while True:
        rows = await pool.fetch(_ARTISTS, first, last, cursor, _ARTISTS_PER_BATCH)
        if not rows:
            return
        artists = [row["artist_id"] for row in rows]
        yield artists
        cursor = artists[-1]


async def _series(
    pool: asyncpg.Pool, artists: list[str], first: date, last: date
) -> dict[SeriesKey, dict[date, float]]:
    series: dict[SeriesKey, dict[date, float]] = defaultdict(dict)
    for row in await pool.fetch(_SERIES, artists, first, last):
        series[(row["artist_id"], row["track_id"], row["event_type"])][row["day"]] = row["quantity"]
    return series


async def _save(pool: asyncpg.Pool, found: list[tuple[SeriesKey, Finding]]) -> int:
    if not found:
        return 0
    columns: list[list[Any]] = [[] for _ in range(8)]
    for (artist, track, metric), f in found:
        for column, value in zip(
            columns, (artist, track, metric, f.day, f.kind, f.observed, f.expected, f.score), strict=True
        ):
            column.append(value)
    status = await pool.execute(_SAVE, *columns)
    return int(status.rsplit(" ", 1)[-1])


def _alert_email(row: asyncpg.Record) -> tuple[str, str]:
    what = f"track {row['track_id']}" if row["track_id"] else "your music"
    metric = str(row["metric"]).replace("_", " ")
    direction = "jump" if row["kind"] == "spike" else "drop"
    subject = f"Unusual {direction} in {metric}s for {what} on {row['day']:%b %d}"
    text = (
        f"Hi {row['name'] or 'there'},\n\n"
        f"On {row['day']:%A %d %B %Y} (UTC), {what} had {row['observed']:,.0f} {metric}s; "
        f"about {row['expected']:,.0f} were expected for that day of the week.\n\n"
        "A sudden change can be a playlist add, a release going viral, or a platform not "
        "reporting. Your analytics dashboard has the details.\n\nThe Max Booster team\n"
    )
    return subject, text


async def notify_new_alerts(ctx: JobContext, pool: asyncpg.Pool) -> dict[str, int]:
    """Email every alert not yet notified (or mark it, when nobody wants the email)."""
    enqueue = await ctx.deps.get(ENQUEUE)
    counts = {"emailed": 0, "skipped": 0}
    while rows := await pool.fetch(_UNNOTIFIED, _ALERTS_PER_BATCH):
        for row in rows:
            job_id = None
            if row["wanted"]:
                subject, text = _alert_email(row)
                contact = Contact(row["artist_id"], row["email"], row["name"])
                candidate = f"analytics-alert:{row['alert_id']}"
                if await send_email(enqueue, contact, subject=subject, text=text, job_id=candidate) is None:
                    ctx.log.warning(
                        "alert email refused", alert_id=row["alert_id"], artist_id=row["artist_id"]
                    )
                else:
                    job_id = candidate
            counts["emailed" if job_id else "skipped"] += 1
            await pool.execute(_MARK_NOTIFIED, row["alert_id"], job_id)
    return counts


async def detect_analytics_anomalies(ctx: JobContext, *, through: date | None = None) -> dict[str, Any]:
    """Flag unusual days (spikes and drops) in recent daily analytics and email new alerts."""
    settings = ctx.deps.settings
    config = _config(settings)
    pool = await ctx.deps.get(POSTGRES)
    await rollup_days(pool)  # judge fresh totals
    last = through or datetime.now(UTC).date() - timedelta(days=1)
    days = [last - timedelta(days=i) for i in reversed(range(settings.analytics_anomaly_scan_days))]
    first = days[0] - timedelta(days=config.history_days)
    scanned = new = 0
    async for artists in _artist_batches(pool, first, last):
        series = await _series(pool, artists, first, last)
        found = [(key, f) for key, values in series.items() for f in scan_series(values, days, config)]
        scanned += len(series)
        new += await _save(pool, found)
    notified = await notify_new_alerts(ctx, pool)
    return {"through": last.isoformat(), "series": scanned, "new_alerts": new, **notified}
