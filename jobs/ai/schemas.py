"""What AI jobs accept and what they return.

Inputs are the jobs' typed keyword arguments: artist-supplied text is length-limited here, so
an oversized value is refused at enqueue time (`JobValidationError`) before anything is
queued or sent to a model. Outputs are pydantic models with no extra keys and bounded
lengths; a reply that does not fit is re-asked for and finally refused, so whatever a model
was talked into writing, a job only ever returns this shape.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    model_validator,
)

__all__ = [
    "CAPTION_LIMITS",
    "NETWORKS",
    "ArtistName",
    "Caption",
    "EmailPurpose",
    "EmailVariant",
    "EmailVariants",
    "Highlights",
    "LongText",
    "Metrics",
    "Network",
    "OutputInvalid",
    "ShortText",
    "SocialCaptions",
    "Tone",
    "TrackTags",
    "WeekNarrative",
    "parse_reply",
]

# -- inputs ---------------------------------------------------------------------------------------

ArtistName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
ShortText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
LongText = Annotated[str, StringConstraints(strip_whitespace=True, max_length=2000)]
MetricName = Annotated[str, StringConstraints(min_length=1, max_length=40, pattern=r"^[\w .%/-]+$")]
Metrics = Annotated[dict[MetricName, float], Field(max_length=20)]
Highlights = Annotated[list[ShortText], Field(max_length=10)]

Network = Literal["instagram", "tiktok", "x", "youtube", "facebook"]
NETWORKS: tuple[Network, ...] = ("instagram", "tiktok", "x", "youtube", "facebook")
Tone = Literal["excited", "warm", "professional", "playful"]
EmailPurpose = Literal["release_announcement", "newsletter", "tour", "merch", "thank_you"]

# Characters a caption may use per network (for X, hashtags included).
CAPTION_LIMITS: dict[Network, int] = {
    "instagram": 2200,
    "tiktok": 2200,
    "x": 280,
    "youtube": 5000,
    "facebook": 5000,
}

# -- outputs --------------------------------------------------------------------------------------


class OutputInvalid(ValueError):
    """The model's reply is not the JSON we asked for; the message says why, for a re-ask."""


class _Output(BaseModel):
    # Built when the first AI reply is read, not at import (issue 18).
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, frozen=True, defer_build=True)


def _with_hash(value: Any) -> Any:
    # Models often drop the '#'; adding it beats a re-ask.
    return value if not isinstance(value, str) or value.startswith("#") else "#" + value.strip()


def _tag(value: Any) -> Any:
    return " ".join(value.lower().split()) if isinstance(value, str) else value


Hashtag = Annotated[str, BeforeValidator(_with_hash), StringConstraints(pattern=r"^#[^\s#]{1,49}$")]
Tag = Annotated[
    str, BeforeValidator(_tag), StringConstraints(min_length=1, max_length=40, pattern=r"^[\w&' /+-]+$")
]
OneLine = Annotated[str, StringConstraints(min_length=1, max_length=120, pattern=r"^[^\r\n]+$")]


class Caption(_Output):
    network: Network
    text: Annotated[str, StringConstraints(min_length=1, max_length=5000)]
    hashtags: Annotated[list[Hashtag], Field(max_length=30)] = []

    def length(self) -> int:
        return len(" ".join([self.text, *self.hashtags]))


class SocialCaptions(_Output):
    captions: Annotated[list[Caption], Field(min_length=1, max_length=len(NETWORKS))]

    @model_validator(mode="after")
    def _fits_request(self, info: ValidationInfo) -> SocialCaptions:
        wanted = list((info.context or {}).get("networks", []))
        got = [c.network for c in self.captions]
        if wanted and sorted(got) != sorted(wanted):
            raise ValueError(
                f"give exactly one caption for each of {', '.join(wanted)} (got {', '.join(got)})"
            )
        for caption in self.captions:
            limit = CAPTION_LIMITS[caption.network]
            if caption.length() > limit:
                raise ValueError(
                    f"the {caption.network} caption is {caption.length()} characters; the limit is {limit}"
                )
        return self


class EmailVariant(_Output):
    subject: OneLine
    body: Annotated[str, StringConstraints(min_length=1, max_length=4000)]


class EmailVariants(_Output):
    variants: Annotated[list[EmailVariant], Field(min_length=1, max_length=5)]

    @model_validator(mode="after")
    def _fits_request(self, info: ValidationInfo) -> EmailVariants:
        wanted = (info.context or {}).get("count")
        if wanted is not None and len(self.variants) != wanted:
            raise ValueError(f"give exactly {wanted} variants (got {len(self.variants)})")
        if len({v.subject.casefold() for v in self.variants}) != len(self.variants):
            raise ValueError("every variant needs a different subject")
        return self


class WeekNarrative(_Output):
    headline: OneLine
    narrative: Annotated[str, StringConstraints(min_length=1, max_length=1200)]


class TrackTags(_Output):
    genres: Annotated[list[Tag], Field(min_length=1, max_length=5)]
    moods: Annotated[list[Tag], Field(min_length=1, max_length=8)]

    @model_validator(mode="after")
    def _distinct(self) -> TrackTags:
        if len(set(self.genres)) != len(self.genres) or len(set(self.moods)) != len(self.moods):
            raise ValueError("list each genre and mood once")
        return self


# -- parsing --------------------------------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)

_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def _explain(exc: ValidationError, limit: int = 5) -> str:
    problems = []
    for err in exc.errors(include_url=False, include_input=False)[:limit]:
        where = ".".join(str(p) for p in err["loc"])
        message = str(err["msg"]).removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)


def parse_reply(
    schema: type[M], content: str | None, *, context: dict[str, Any], finish_reason: str | None = None
) -> M:
    """The reply as `schema`, or `OutputInvalid` saying what is wrong with it."""
    if not content or not content.strip():
        raise OutputInvalid("the reply was empty")
    text = content.strip()
    fenced = _FENCE.match(text)  # some local models wrap JSON in a code fence even in JSON mode
    if fenced:
        text = fenced.group(1)
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        if finish_reason == "length":
            raise OutputInvalid("the reply was cut off before the JSON ended; keep it shorter") from None
        raise OutputInvalid(f"the reply is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise OutputInvalid("the reply must be one JSON object")
    try:
        return schema.model_validate(data, context=context)
    except ValidationError as exc:
        raise OutputInvalid(_explain(exc)) from None
