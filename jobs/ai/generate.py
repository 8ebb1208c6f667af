"""The work every AI job shares: cache lookup, the request, output validation and re-asks.

A reply that is not the JSON asked for is re-asked for with the reason, at most
`AI_MAX_OUTPUT_RETRIES` times within the attempt, then the job fails permanently: the
endpoint answered, so the job retry policy (meant for outages) would only repeat the same
conversation. Transport and HTTP failures propagate from the client as Transient/Permanent
errors for that policy to handle.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from pydantic import ValidationError

from core.context import JobContext
from core.errors import PermanentError
from jobs.ai.client import AI_CLIENT, Usage
from jobs.ai.prompts import Prompt, correction
from jobs.ai.schemas import OutputInvalid, parse_reply

__all__ = ["cache_key", "generate"]

_RESPONSE_FORMAT = {"type": "json_object"}


def cache_key(model: str, prompt: Prompt) -> str:
    """`ai:<sha256>` over everything that shapes the reply; the cache adds its own prefix."""
    identity = {
        "kind": prompt.kind,
        "model": model,
        "messages": prompt.messages,
        "temperature": prompt.temperature,
        "max_tokens": prompt.max_tokens,
        "response_format": _RESPONSE_FORMAT,
        "context": prompt.context,
    }
    digest = hashlib.sha256(orjson.dumps(identity, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"ai:{digest}"


def _result(
    output: dict[str, Any], model: str, *, cached: bool, usage: Usage, requests: int
) -> dict[str, Any]:
    return {
        "output": output,
        "model": model,
        "cached": cached,
        "requests": requests,
        "usage": usage.as_dict(),
    }


def _report(ctx: JobContext, model: str, *, cached: bool, usage: Usage, requests: int) -> None:
    ctx.report.update(ai_model=model, ai_cached=cached, ai_requests=requests, **usage.as_dict())


async def _from_cache(ctx: JobContext, key: str, prompt: Prompt) -> tuple[dict[str, Any], str] | None:
    raw = await ctx.deps.cache.get(key)
    if raw is None:
        return None
    try:
        entry = orjson.loads(raw)
        output = prompt.schema.model_validate(entry["output"], context=prompt.context)
        return output.model_dump(mode="json"), str(entry["model"])
    except (orjson.JSONDecodeError, ValidationError, KeyError, TypeError):
        ctx.log.warning("ignoring unreadable ai cache entry", key=key)
        return None


async def generate(ctx: JobContext, prompt: Prompt) -> dict[str, Any]:
    """The validated output for `prompt`, from the cache or the model, with token usage."""
    settings = ctx.deps.settings
    client = await ctx.deps.get(AI_CLIENT)
    key = cache_key(client.model, prompt)
    hit = await _from_cache(ctx, key, prompt)
    if hit is not None:
        _report(ctx, hit[1], cached=True, usage=Usage(), requests=0)
        return _result(hit[0], hit[1], cached=True, usage=Usage(), requests=0)

    messages = list(prompt.messages)
    usage, requests, model = Usage(), 0, client.model
    tries = 1 + settings.ai_max_output_retries
    reason = ""
    try:
        for _ in range(tries):
            reply = await client.chat_json(
                messages, temperature=prompt.temperature, max_tokens=prompt.max_tokens
            )
            requests, usage, model = requests + 1, usage + reply.usage, reply.model
            try:
                output = parse_reply(
                    prompt.schema, reply.content, context=prompt.context, finish_reason=reply.finish_reason
                )
            except OutputInvalid as exc:
                reason = str(exc)
                ctx.log.warning("ai output invalid", reason=reason, request=requests, of=tries)
                messages += [
                    {"role": "assistant", "content": reply.content or ""},
                    {"role": "user", "content": correction(reason)},
                ]
                continue
            break
        else:
            raise PermanentError(f"the model's reply was unusable {tries} times; last problem: {reason}")
    finally:
        # Tokens spent count even when the attempt fails.
        _report(ctx, model, cached=False, usage=usage, requests=requests)

    data = output.model_dump(mode="json")
    if settings.ai_cache_ttl > 0:
        await ctx.deps.cache.set(key, orjson.dumps({"output": data, "model": model}), settings.ai_cache_ttl)
    return _result(data, model, cached=False, usage=usage, requests=requests)
