"""The weekly insights job: one summary and one digest email per artist and ISO week.

For each artist with a contact who wants the digest and any activity in the week or the one
before: totals per event type with the change on the previous week, sales, top tracks (by
title, from `analytics_tracks`), top sources and open alerts. The email is the email family's
`weekly_digest` template, with a short story of the week written by the AI when AI is
configured (without it, or if the AI fails, the digest goes out without the story). The
email's job id (and idempotency key) is `weekly-insights:{artist}:{iso week}`, and a row in
`analytics_digests` records it once queued, so running the job twice sends one digest per
artist.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import orjson

from core.context import JobContext
from core.deps import POSTGRES
from core.enqueue import ENQUEUE
from core.errors import PermanentError, TransientError
from jobs.ai import prompts
from jobs.ai.client import ai_not_configured
from jobs.ai.generate import generate
from jobs.analytics.events import MONEY_EVENTS
from jobs.analytics.notify import Contact, send_template_email
from jobs.analytics.rollup import rollup_days

__all__ = ["build_summaries", "digest_context", "iso_week_bounds", "send_weekly_insights", "week_label"]

_ARTISTS_PER_BATCH = 200
_TOP = 5

_DUE = """
SELECT c.artist_id, c.email, c.name FROM analytics_contacts c
WHERE c.weekly_insights AND c.artist_id > $1
  AND NOT EXISTS (SELECT 1 FROM analytics_digests g WHERE g.artist_id = c.artist_id AND g.iso_week = $2)
  AND EXISTS (SELECT 1 FROM analytics_daily d WHERE d.artist_id = c.artist_id AND d.day BETWEEN $3 AND $4)
ORDER BY c.artist_id LIMIT $5
"""
# How many artists are still due this week (the same rule as _DUE), for progress reports.
_DUE_COUNT = """
SELECT count(*) FROM analytics_contacts c
WHERE c.weekly_insights
  AND NOT EXISTS (SELECT 1 FROM analytics_digests g WHERE g.artist_id = c.artist_id AND g.iso_week = $1)
  AND EXISTS (SELECT 1 FROM analytics_daily d WHERE d.artist_id = c.artist_id AND d.day BETWEEN $2 AND $3)
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
_TITLES = "SELECT track_id, title FROM analytics_tracks WHERE track_id = ANY($1::text[])"
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
        if row["event_type"] in MONEY_EVENTS:  # sales, and beat purchases that carry an amount
            pair = cents[row["artist_id"]]
            pair[0] += int(row["cents_this_week"])
            pair[1] += int(row["cents_last_week"])
    for artist, (this, last) in cents.items():
        out[artist]["sales_cents"] = {"this_week": this, "last_week": last, "change_pct": _change(this, last)}
    top = await pool.fetch(_TOP_TRACKS, artists, monday, sunday, _TOP)
    titles = {
        r["track_id"]: r["title"] for r in await pool.fetch(_TITLES, list({r["track_id"] for r in top}))
    }
    for row in top:
        out[row["artist_id"]]["top_tracks"].append(
            {
                "track_id": row["track_id"],
                "title": titles.get(row["track_id"]),
                "listens": int(row["listens"]),
            }
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


# How the digest names each event type's weekly count (streams and plays are its headline).
_LABELS = {
    "page_view": "Page views",
    "link_click": "Link clicks",
    "social_engagement": "Social engagements",
    "like": "Likes",
    "share": "Shares",
    "presave": "Pre-saves",
    "preview": "Previews",
    "repeat": "Repeat plays",
    "add_to_cart": "Added to cart",
    "purchase": "Beat purchases",
    "sale": "Sales",
}
_STREAMS = ("stream", "play")


def week_label(monday: date) -> str:
    """'23 to 29 November', or '30 November to 6 December' across a month."""
    sunday = monday + timedelta(days=6)
    if monday.month == sunday.month:
        return f"{monday.day} to {sunday.day} {sunday:%B}"
    return f"{monday.day} {monday:%B} to {sunday.day} {sunday:%B}"


def _streams(summary: dict[str, Any], week: str) -> int:
    return sum(int(summary["totals"].get(kind, {}).get(week, 0)) for kind in _STREAMS)


def _highlights(summary: dict[str, Any]) -> list[str]:
    titles = {t["track_id"]: t["title"] for t in summary["top_tracks"] if t["title"]}
    out = []
    for alert in summary["open_alerts"][:3]:
        what = _LABELS.get(alert["metric"], alert["metric"].replace("_", " ") + "s").lower()
        track = alert["track_id"]
        subject = f"{what} of {titles.get(track, 'one of your tracks')}" if track else what
        moved = "jumped" if alert["kind"] == "spike" else "fell"
        day = date.fromisoformat(alert["day"])
        out.append(f"{subject[0].upper()}{subject[1:]} {moved} on {day:%A} {day.day} {day:%B}")
    return out


def digest_context(contact: Contact, monday: date, summary: dict[str, Any]) -> dict[str, Any]:
    """The `weekly_digest` template's context for one artist's week (the platform's names)."""
    this_week, last_week = _streams(summary, "this_week"), _streams(summary, "last_week")
    context: dict[str, Any] = {
        "userName": contact.name or "there",
        "weekLabel": week_label(monday),
        "streamsThisWeek": this_week,
        "streamsLastWeek": last_week,
        "streamsChange": this_week - last_week,
        "topTracks": [
            # A track the web app never named is shown by its id rather than left out.
            {"title": t["title"] or t["track_id"], "streams": t["listens"]}
            for t in summary["top_tracks"]
        ],
        "totals": {
            label: summary["totals"][kind]["this_week"]
            for kind, label in _LABELS.items()
            if summary["totals"].get(kind, {}).get("this_week")
        },
        "highlights": _highlights(summary),
    }
    change = _change(this_week, last_week)
    if change is not None:
        context["streamsChangePercent"] = change
    if summary["sales_cents"] and summary["sales_cents"]["this_week"]:
        context["revenueEarned"] = summary["sales_cents"]["this_week"] / 100
    return context


async def _narrative(ctx: JobContext, contact: Contact, monday: date, context: dict[str, Any]) -> Any:
    """The AI's headline and story of the week, or None (AI not configured, or it failed)."""
    if ai_not_configured(ctx.deps.settings) is not None:
        return None
    metrics: dict[str, float] = {"streams this week": context["streamsThisWeek"]}
    metrics["streams last week"] = context["streamsLastWeek"]
    if "streamsChangePercent" in context:
        metrics["streams change %"] = context["streamsChangePercent"]
    if "revenueEarned" in context:
        metrics["revenue $"] = context["revenueEarned"]
    for label, count in list(context["totals"].items())[:10]:
        metrics[label.lower()] = count
    highlights = [f"top track: {t['title']} ({t['streams']} streams)" for t in context["topTracks"][:3]]
    highlights += context["highlights"]
    prompt = prompts.week_narrative(
        artist_name=(contact.name or "the artist")[:100], week_start=monday, metrics=metrics,
        highlights=[h[:200] for h in highlights[:10]],
    )  # fmt: skip
    try:
        return (await generate(ctx, prompt))["output"]
    except (TransientError, PermanentError) as exc:
        ctx.log.warning(
            "weekly insights narrative unavailable, the digest goes without it",
            artist_id=contact.artist_id,
            error=f"{type(exc).__name__}: {exc}",
        )
        return None


async def send_weekly_insights(ctx: JobContext, *, week: str | None = None) -> dict[str, Any]:
    """Queue one weekly insights email per artist for `week` (default: last ISO week)."""
    week = week or _last_week(datetime.now(UTC).date())
    monday, sunday = iso_week_bounds(week)
    pool = await ctx.deps.get(POSTGRES)
    enqueue = await ctx.deps.get(ENQUEUE)
    await rollup_days(pool)
    counts = {"queued": 0, "refused": 0}
    due = int(await pool.fetchval(_DUE_COUNT, week, monday - timedelta(days=7), sunday) or 0)
    cursor = ""
    while rows := await pool.fetch(
        _DUE, cursor, week, monday - timedelta(days=7), sunday, _ARTISTS_PER_BATCH
    ):
        cursor = rows[-1]["artist_id"]
        summaries = await build_summaries(pool, [row["artist_id"] for row in rows], monday)
        contacts = [Contact(row["artist_id"], row["email"], row["name"]) for row in rows]
        contexts = {c.artist_id: digest_context(c, monday, summaries[c.artist_id]) for c in contacts}
        stories = await asyncio.gather(*(_narrative(ctx, c, monday, contexts[c.artist_id]) for c in contacts))
        for contact, story in zip(contacts, stories, strict=True):
            summary = {"artist_id": contact.artist_id, "week": week, **summaries[contact.artist_id]}
            context = contexts[contact.artist_id]
            if story is not None:
                context["narrative"] = story
            job_id = f"weekly-insights:{contact.artist_id}:{week}"
            outcome, refusal = await send_template_email(
                enqueue,
                contact,
                template="weekly_digest",
                context=context,
                job_id=job_id,
                categories=("analytics", "weekly_insights"),
            )
            if outcome is None:
                ctx.log.warning("weekly insights email refused", artist_id=contact.artist_id, reason=refusal)
            counts["queued" if outcome else "refused"] += 1
            await pool.execute(
                _RECORD, contact.artist_id, week, job_id if outcome else None, orjson.dumps(summary).decode()
            )
        handled = counts["queued"] + counts["refused"]
        ctx.progress(handled / max(due, handled), f"{handled} of {max(due, handled)} artists")
        ctx.raise_if_cancelled()  # between batches: the artists done so far are recorded
    return {"week": week, **counts}
