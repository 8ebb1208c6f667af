"""Analytics events as the web app sends them: checked at the producer, then sent as JSON chunks.

An event is refused, with a reason, when its type is unknown, a required field is missing, an
id or source is not a plain token, its time is outside [now - max age, now + clock skew], or
its properties are over the size limit. The valid events of a call go on regardless.

On the wire (a Redis list item, or an in-process buffer entry) a chunk is the JSON array
`[1, rows]`, each row in the column order of `ROW_COLUMNS`: compact, and the flush job hands
the rows to COPY without building an object per event.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, Self, get_args

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from core.plugin import RefusedEvent

__all__ = [
    "EVENT_TYPES",
    "MONEY_EVENTS",
    "ROW_COLUMNS",
    "WIRE_VERSION",
    "Event",
    "EventLimits",
    "EventType",
    "RefusedEvent",
    "decode_chunk",
    "encode_chunks",
    "row_problem",
    "validate_events",
]

EventType = Literal[
    "play",
    "stream",
    "page_view",
    "link_click",
    "social_engagement",
    "sale",
    # What listeners do with a beat in the marketplace (the platform's beat interactions;
    # `track_id` is the beat's listing id, `artist_id` its producer; `play` is above).
    "like",
    "share",
    "purchase",
    "preview",
    "skip",
    "repeat",
    "add_to_cart",
    # A pre-save of an upcoming release (pre-save pages, HyperFollow, countdowns).
    "presave",
]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)
# Events that are about one track (or beat) and make no sense without it. A share or a
# pre-save may be about a release or a page instead.
_TRACK_EVENTS = frozenset({"play", "stream", "like", "purchase", "preview", "skip", "repeat", "add_to_cart"})
# Events that may carry an amount: a sale must, a beat purchase may.
MONEY_EVENTS = frozenset({"sale", "purchase"})

_ID_RULE = "1-128 letters, digits and _ . : @ / - (starting with a letter or digit)"
_SOURCE_RULE = "1-32 lowercase letters, digits and _ . - (e.g. spotify, apple_music, web)"
Id = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,127}$")]
Source = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,31}$")]

WIRE_VERSION = 1
ROW_COLUMNS = (
    "event_id",
    "event_type",
    "artist_id",
    "track_id",
    "source",
    "occurred_us",  # microseconds since the Unix epoch, UTC
    "quantity",
    "amount_cents",
    "properties",  # JSON text or null
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class EventLimits:
    """What "sane" means for one call; passed to validation as its context."""

    now: datetime
    max_age: timedelta
    max_skew: timedelta
    max_properties_bytes: int


class Event(BaseModel):
    """One thing that happened. `occurred_at` defaults to now, `event_id` to a fresh id.

    Give `event_id` when the web app may send the same event again (a retried request): events
    with the same id are stored once. `quantity` counts what one event stands for (a platform
    report of 120 streams); `amount_cents` is a sale's amount in the settlement currency.
    """

    model_config = ConfigDict(extra="forbid")

    type: EventType
    artist_id: Id
    source: Source
    track_id: Id | None = None
    occurred_at: AwareDatetime | None = None
    event_id: Id | None = None
    quantity: int = Field(1, ge=1, le=1_000_000)
    amount_cents: int | None = Field(None, ge=0, le=10**12)
    properties: dict[str, JsonValue] | None = None

    @field_validator("occurred_at")
    @classmethod
    def _recent(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        limits = info.context
        if value is None or not isinstance(limits, EventLimits):
            return value
        if value < limits.now - limits.max_age:
            raise ValueError(f"is older than {_span(limits.max_age)}; such late events are refused")
        if value > limits.now + limits.max_skew:
            raise ValueError(f"is more than {_span(limits.max_skew)} in the future; check the sender's clock")
        return value

    @field_validator("properties")
    @classmethod
    def _bounded(
        cls, value: dict[str, JsonValue] | None, info: ValidationInfo
    ) -> dict[str, JsonValue] | None:
        limits = info.context
        if not value or not isinstance(limits, EventLimits):
            return value or None
        encoded = orjson.dumps(value)
        if len(encoded) > limits.max_properties_bytes:
            raise ValueError(
                f"are {len(encoded)} bytes as JSON, over the {limits.max_properties_bytes}-byte limit"
            )
        if b"\\u0000" in encoded:
            raise ValueError("contain a NUL character, which Postgres cannot store")
        return value

    @model_validator(mode="after")
    def _fits_type(self) -> Self:
        if self.type in _TRACK_EVENTS and self.track_id is None:
            raise ValueError(f"a {self.type!r} event needs 'track_id'")
        if self.type == "sale" and self.amount_cents is None:
            raise ValueError("a 'sale' event needs 'amount_cents'")
        if self.type not in MONEY_EVENTS and self.amount_cents:
            raise ValueError(f"'amount_cents' is only for 'sale' and 'purchase' events, not {self.type!r}")
        return self

    def row(self, now_us: int) -> list[Any]:
        """The wire row, in `ROW_COLUMNS` order."""
        occurred_us = now_us if self.occurred_at is None else (self.occurred_at - _EPOCH) // _MICROSECOND
        return [
            self.event_id or new_event_id(now_us),
            self.type,
            self.artist_id,
            self.track_id,
            self.source,
            occurred_us,
            self.quantity,
            self.amount_cents or 0,
            orjson.dumps(self.properties).decode() if self.properties else None,
        ]


def new_event_id(now_us: int) -> str:
    """Time-ordered, so generated ids land at the right edge of the primary key index."""
    return f"{now_us:013x}{os.urandom(9).hex()}"


def _span(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    if seconds >= 86400 and seconds % 86400 == 0:
        return f"{seconds / 86400:g} days"
    return f"{seconds:g} s"


_EVENTS = TypeAdapter(list[Event])


def _reason(error: Any) -> str:
    loc = [str(part) for part in error["loc"][1:]]
    field = ".".join(loc)
    kind = error["type"]
    if not field:
        message = str(error["msg"]).removeprefix("Value error, ")
        return "not an event object" if kind == "model_type" else message
    if kind == "missing":
        return f"{field}: is required"
    if kind == "extra_forbidden":
        return f"{field}: unknown field; known fields are {', '.join(Event.model_fields)}"
    if kind == "literal_error":
        return f"{field}: {error.get('input')!r} is not an event type; use one of {', '.join(EVENT_TYPES)}"
    if kind == "string_pattern_mismatch":
        rule = _SOURCE_RULE if loc[0] == "source" else _ID_RULE
        shown = repr(error.get("input"))
        return f"{field}: {shown[:60]} is not valid; use {rule}"
    if kind == "timezone_aware":
        return f"{field}: needs a timezone (an aware datetime or an ISO string ending in Z or +hh:mm)"
    return f"{field}: {str(error['msg']).removeprefix('Value error, ')}"


def _event_id_of(raw: Any) -> str | None:
    if isinstance(raw, dict):
        value = raw.get("event_id")
        return value if isinstance(value, str) else None
    return None


def validate_events(raw: Sequence[Any], limits: EventLimits) -> tuple[list[Event], list[RefusedEvent]]:
    """Valid events in order, and a reason for each refused one; never raises for bad events."""
    try:
        return _EVENTS.validate_python(raw, context=limits), []
    except ValidationError as exc:
        reasons: dict[int, list[str]] = defaultdict(list)
        for error in exc.errors(include_url=False):
            reasons[int(error["loc"][0])].append(_reason(error))
    refused = [
        RefusedEvent(index, "; ".join(found), _event_id_of(raw[index]))
        for index, found in sorted(reasons.items())
    ]
    # Each event is validated on its own, so the rest are known to pass.
    rest = [item for index, item in enumerate(raw) if index not in reasons]
    return _EVENTS.validate_python(rest, context=limits), refused


def encode_chunks(events: Sequence[Event], *, now_us: int, chunk_events: int) -> list[bytes]:
    rows = [event.row(now_us) for event in events]
    return [
        orjson.dumps([WIRE_VERSION, rows[i : i + chunk_events]]) for i in range(0, len(rows), chunk_events)
    ]


_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,127}$")
_SOURCE_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")


def row_problem(row: Sequence[Any], limits: EventLimits) -> str | None:
    """Why a wire row is not one our producer would have written, or None.

    Checked again when events are stored, since anyone who can write to Redis can push rows
    straight onto the list. The age bound is twice the producer's (events may wait in Redis
    through an outage before they are stored)."""
    event_id, event_type, artist_id, track_id, source, occurred_us, quantity, amount_cents, properties = row
    if not (isinstance(event_id, str) and _ID_RE.match(event_id)):
        return "event_id is not a valid id"
    if event_type not in EVENT_TYPES:
        return f"type {str(event_type)[:40]!r} is not an event type"
    if not (isinstance(artist_id, str) and _ID_RE.match(artist_id)):
        return "artist_id is not a valid id"
    if track_id is not None and not (isinstance(track_id, str) and _ID_RE.match(track_id)):
        return "track_id is not a valid id"
    if event_type in _TRACK_EVENTS and track_id is None:
        return f"a {event_type!r} event needs a track_id"
    if not (isinstance(source, str) and _SOURCE_RE.match(source)):
        return "source is not a valid source"
    now_us = int(limits.now.timestamp() * 1_000_000)
    oldest = now_us - 2 * limits.max_age // _MICROSECOND
    newest = now_us + limits.max_skew // _MICROSECOND
    if not (_plain_int(occurred_us) and oldest <= occurred_us <= newest):
        return "the event's time is out of range"
    if not (_plain_int(quantity) and 1 <= quantity <= 1_000_000):
        return "quantity is out of range"
    if not (_plain_int(amount_cents) and 0 <= amount_cents <= 10**12):
        return "amount_cents is out of range"
    if event_type not in MONEY_EVENTS and amount_cents != 0:
        return "amount_cents is only for sale and purchase events"
    if properties is not None and not (
        isinstance(properties, str) and len(properties.encode()) <= limits.max_properties_bytes
    ):
        return "properties are not JSON text within the size limit"
    return None


def _plain_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def decode_chunk(raw: bytes) -> list[list[Any]]:
    """The rows of one chunk; raises ValueError when it is not a chunk we wrote."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not (isinstance(value, list) and len(value) == 2 and value[0] == WIRE_VERSION):
        raise ValueError(f"not a version {WIRE_VERSION} chunk")
    rows = value[1]
    width = len(ROW_COLUMNS)
    if not isinstance(rows, list) or not all(isinstance(row, list) and len(row) == width for row in rows):
        raise ValueError(f"rows are not lists of {width} values")
    return rows
