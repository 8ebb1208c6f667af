"""What an AI job spends of the provider's rate limits (`RATE_LIMITS=ai_requests=...,ai_tokens=...`).

One request per try, and tokens estimated before the call: the input at about four characters
a token (the arguments plus the fixed instructions) and the output the prompt asks for at most.
The estimate errs high, so a tokens-per-minute limit set to the provider's is not exceeded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson

from core.flow import RateCost
from jobs.ai import prompts
from jobs.ai.schemas import NETWORKS

__all__ = [
    "AI_REQUESTS",
    "AI_TOKENS",
    "EMAIL_VARIANTS",
    "SOCIAL_CAPTIONS",
    "TRACK_TAGS",
    "WEEK_NARRATIVE",
    "ai_rate_costs",
]

AI_REQUESTS = "ai_requests"
AI_TOKENS = "ai_tokens"
# The instructions and JSON shape sent with every prompt, in tokens.
_INSTRUCTION_TOKENS = 400


def _input_tokens(payload: Mapping[str, Any]) -> int:
    return len(orjson.dumps(dict(payload))) // 4 + _INSTRUCTION_TOKENS


def ai_rate_costs(output_budget: Callable[[Mapping[str, Any]], int]) -> tuple[RateCost, RateCost]:
    """One request, and the estimated tokens of a job whose output budget is `output_budget`."""
    return (
        RateCost(AI_REQUESTS, 1),
        RateCost(AI_TOKENS, lambda payload: _input_tokens(payload) + output_budget(payload)),
    )


def _networks(payload: Mapping[str, Any]) -> int:
    chosen = payload.get("networks")
    return len(chosen) if isinstance(chosen, list) and chosen else len(NETWORKS)


def _variants(payload: Mapping[str, Any]) -> int:
    count = payload.get("variants", 3)
    return count if isinstance(count, int) and 1 <= count <= 5 else 5


SOCIAL_CAPTIONS = ai_rate_costs(lambda p: prompts.social_captions_budget(_networks(p)))
EMAIL_VARIANTS = ai_rate_costs(lambda p: prompts.email_variants_budget(_variants(p)))
WEEK_NARRATIVE = ai_rate_costs(lambda p: prompts.WEEK_NARRATIVE_BUDGET)
TRACK_TAGS = ai_rate_costs(lambda p: prompts.TRACK_TAGS_BUDGET)
