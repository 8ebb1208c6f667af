"""Historical stream imports: CSV reports of streams per track, platform and day.

Live events older than ANALYTICS_MAX_EVENT_AGE_S are refused at the producer; a distributor's
report of last year's streams is not a late event but history, and comes in here instead
(`import_streams`, or `python -m worker import-streams FILE.csv`). Any date since 2000 is
accepted. Each row becomes one `stream` event whose id is derived from the row's identity
(artist, track, platform, day and territory; or the file's own `import_key` column), so
importing the same report twice stores it once; the days touched are rolled up at once.

Columns (header names are matched case-insensitively, the first alias found wins):
    date        date | day | occurred_at | timestamp        YYYY-MM-DD (UTC day) or ISO time with zone
    artist_id   artist_id | artistid | artist
    track_id    track_id | trackid | track | isrc
    source      source | platform | dsp | store            e.g. Spotify -> spotify, Apple Music -> apple_music
    streams     streams | quantity | count | plays
  optional:
    track_title track_title | tracktitle | title           kept for the weekly insights email
    territory   territory | country                        part of the row's identity
    import_key  import_key | row_id | event_id             your own unique row id
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any, Self

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.context import JobContext
from core.deps import POSTGRES
from core.errors import PermanentError
from jobs.analytics.rollup import rollup_days
from jobs.analytics.store import write_rows

__all__ = ["StreamRow", "StreamsReport", "import_streams", "parse_streams_csv"]

_ALIASES: dict[str, tuple[str, ...]] = {
    "date": ("date", "day", "occurred_at", "timestamp"),
    "artist_id": ("artist_id", "artistid", "artist"),
    "track_id": ("track_id", "trackid", "track", "isrc"),
    "source": ("source", "platform", "dsp", "store"),
    "streams": ("streams", "quantity", "count", "plays"),
    "track_title": ("track_title", "tracktitle", "title"),
    "territory": ("territory", "country"),
    "import_key": ("import_key", "row_id", "event_id"),
}
_REQUIRED = ("date", "artist_id", "track_id", "source", "streams")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,127}$")
_EARLIEST = date(2000, 1, 1)
_MAX_STREAMS = 2_000_000_000  # the events table's quantity is a 32-bit integer
_MAX_ROWS = 50_000  # per call; the CLI sends a large file in chunks
_MAX_ERRORS_SHOWN = 10


@dataclass(frozen=True, slots=True)
class StreamRow:
    line: int
    occurred_at: datetime
    artist_id: str
    track_id: str
    source: str
    streams: int
    track_title: str | None
    territory: str | None
    import_key: str | None

    @property
    def event_id(self) -> str:
        """Deterministic: the same row imported again has the same id and is stored once."""
        if self.import_key is not None:
            identity = f"key\x1f{self.import_key}"
        else:
            parts = (
                self.artist_id,
                self.track_id,
                self.source,
                self.occurred_at.isoformat(),
                self.territory or "",
            )
            identity = "\x1f".join(("row", *parts))
        return "imp:" + hashlib.sha256(identity.encode()).hexdigest()[:40]


def _columns(header: list[str]) -> dict[str, int]:
    normalized = [re.sub(r"[\s-]+", "_", name.strip().lower()) for name in header]
    found: dict[str, int] = {}
    for field, aliases in _ALIASES.items():
        for alias in aliases:
            if alias in normalized:
                found[field] = normalized.index(alias)
                break
    missing = [field for field in _REQUIRED if field not in found]
    if missing:
        wanted = "; ".join(f"{field} (or {', '.join(_ALIASES[field][1:])})" for field in missing)
        raise ValueError(f"the header {header!r} lacks {wanted}")
    return found


def _when(text: str, now: datetime) -> datetime:
    text = text.strip()
    try:
        if len(text) == 10:
            when = datetime.combine(date.fromisoformat(text), time(), UTC)
        else:
            when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"date {text!r} is not YYYY-MM-DD or an ISO time") from None
    if when.tzinfo is None:
        raise ValueError(f"time {text!r} has no zone; end it with Z or +hh:mm, or give a date")
    if when.date() < _EARLIEST:
        raise ValueError(f"date {text!r} is before 2000; check the date column")
    if when > now + timedelta(days=1):
        raise ValueError(f"date {text!r} is in the future")
    return when.astimezone(UTC)


def _source(text: str) -> str:
    token = re.sub(r"[^a-z0-9_.-]+", "_", text.strip().lower()).strip("_")[:32]
    if not token:
        raise ValueError(f"platform {text!r} is empty")
    return token


def _row(line: int, values: list[str], columns: dict[str, int], now: datetime) -> StreamRow | None:
    def get(field: str) -> str | None:
        index = columns.get(field)
        value = values[index].strip() if index is not None and index < len(values) else ""
        return value or None

    for field in ("artist_id", "track_id", "import_key"):
        value = get(field)
        if value is not None and not _ID.match(value):
            raise ValueError(f"{field} {value!r} is not an id (1-128 letters, digits and _ . : @ / -)")
    artist, track = get("artist_id"), get("track_id")
    if artist is None or track is None:
        raise ValueError("artist_id and track_id are required")
    raw_streams = (get("streams") or "").replace(",", "").replace("_", "")
    if not raw_streams.isdigit():
        raise ValueError(f"streams {get('streams')!r} is not a whole number of streams")
    streams = int(raw_streams)
    if streams > _MAX_STREAMS:
        raise ValueError(f"streams {streams} is over {_MAX_STREAMS:,}")
    if streams == 0:
        return None  # nothing happened; counted as skipped
    title = get("track_title")
    return StreamRow(
        line=line,
        occurred_at=_when(get("date") or "", now),
        artist_id=artist,
        track_id=track,
        source=_source(get("source") or ""),
        streams=streams,
        track_title=title[:300] if title else None,
        territory=(get("territory") or "").upper() or None,
        import_key=get("import_key"),
    )


@dataclass(frozen=True, slots=True)
class ParsedStreams:
    rows: list[StreamRow]
    skipped_zero: int


def parse_streams_csv(text: str, *, first_line: int = 1, now: datetime | None = None) -> ParsedStreams:
    """Rows of a streams report (header first); raises ValueError listing the bad lines.

    `first_line` is the file line of the header, so errors name lines of the whole file when a
    large file arrives in chunks."""
    now = now or datetime.now(UTC)
    records = list(csv.reader(io.StringIO(text.lstrip("\ufeff"))))
    records = [r for r in records if any(cell.strip() for cell in r)]
    if len(records) < 2:
        raise ValueError("no rows: give a header line and at least one row")
    if len(records) - 1 > _MAX_ROWS:
        raise ValueError(f"{len(records) - 1} rows in one call, over {_MAX_ROWS:,}; split the file")
    columns = _columns(records[0])
    rows: list[StreamRow] = []
    errors: list[str] = []
    skipped = 0
    seen: dict[str, int] = {}
    for offset, values in enumerate(records[1:], start=1):
        line = first_line + offset
        try:
            row = _row(line, values, columns, now)
        except ValueError as exc:
            errors.append(f"line {line}: {exc}")
            continue
        if row is None:
            skipped += 1
            continue
        earlier = seen.setdefault(row.event_id, line)
        if earlier != line:
            errors.append(
                f"line {line}: repeats line {earlier} (same artist, track, platform, day and territory); "
                "sum them, or add a territory or import_key column"
            )
            continue
        rows.append(row)
    if errors:
        more = f" (and {len(errors) - _MAX_ERRORS_SHOWN} more)" if len(errors) > _MAX_ERRORS_SHOWN else ""
        raise ValueError("; ".join(errors[:_MAX_ERRORS_SHOWN]) + more)
    return ParsedStreams(rows, skipped)


class StreamsReport(BaseModel):
    """A streams report as CSV text (header first), checked when the job is enqueued.
    `first_line` is the file line of its header, for a chunk of a larger file."""

    model_config = ConfigDict(extra="forbid")

    csv: Annotated[str, Field(min_length=1)]
    first_line: Annotated[int, Field(ge=1)] = 1

    @model_validator(mode="after")
    def _readable(self) -> Self:
        parse_streams_csv(self.csv, first_line=self.first_line)
        return self


_TITLES = """
INSERT INTO analytics_tracks AS t (track_id, artist_id, title)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
ON CONFLICT (track_id) DO UPDATE
SET artist_id = EXCLUDED.artist_id, title = EXCLUDED.title, updated_at = now()
WHERE (t.artist_id, t.title) IS DISTINCT FROM (EXCLUDED.artist_id, EXCLUDED.title)
"""


def _wire_row(row: StreamRow) -> list[Any]:
    occurred_us = (row.occurred_at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    properties: dict[str, Any] = {"imported": True}
    if row.territory:
        properties["territory"] = row.territory
    return [
        row.event_id, "stream", row.artist_id, row.track_id, row.source, occurred_us, row.streams, 0,
        orjson.dumps(properties).decode(),
    ]  # fmt: skip


async def import_streams(ctx: JobContext, *, report: StreamsReport) -> dict[str, Any]:
    """Import a CSV report of historical streams (any age); a re-import stores nothing twice."""
    try:
        parsed = parse_streams_csv(report.csv, first_line=report.first_line)
    except ValueError as exc:  # checked at enqueue; a hand-written payload can still be wrong
        raise PermanentError(str(exc)) from None
    pool = await ctx.deps.get(POSTGRES)
    inserted = await write_rows(pool, [_wire_row(row) for row in parsed.rows])
    titles = {row.track_id: (row.artist_id, row.track_title) for row in parsed.rows if row.track_title}
    if titles:
        tracks = list(titles)
        await pool.execute(_TITLES, tracks, [titles[t][0] for t in tracks], [titles[t][1] for t in tracks])
    days = sorted({row.occurred_at.date() for row in parsed.rows})
    if inserted:
        await rollup_days(pool, days)
    return {
        "rows": len(parsed.rows) + parsed.skipped_zero,
        "imported": inserted,
        "already_imported": len(parsed.rows) - inserted,
        "skipped_zero": parsed.skipped_zero,
        "days": len(days),
        "first_day": days[0].isoformat() if days else None,
        "last_day": days[-1].isoformat() if days else None,
        "titles": len(titles),
    }
