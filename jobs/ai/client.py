"""An async client for OpenAI-compatible chat completions, mapped onto the job error taxonomy.

Retries are the job's, not the client's: one call sends one HTTP request. A 408, 409, 429 or
5xx answer, a timeout or a connection error raises `TransientError` (carrying the provider's
Retry-After), and the runner's retry policy (backoff with jitter, honouring `retry_after`,
bounded by the job's `max_tries`) decides when to try again. That path is the same in queued
and inline mode, shows every try in the logs, and frees a worker slot while waiting. Any
other 4xx raises `PermanentError` with the provider's own message.

The API key lives only in the HTTP client's headers (httpx masks them in reprs) and is
scrubbed from any provider message we pass on.
"""

from __future__ import annotations

import asyncio
import email.utils
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import SecretStr

from core.deps import Resource
from core.errors import PermanentError, TransientError
from jobs.ai.budget import RequestBudget
from settings import Settings, redact_url

if TYPE_CHECKING:
    import httpx

__all__ = ["AI_CLIENT", "AIClient", "ChatReply", "Usage", "ai_not_configured"]

_TRANSIENT_STATUS = {408, 409, 429}
_STATUS_HINTS = {
    401: "check AI_API_KEY",
    403: "check AI_API_KEY and the key's access to AI_MODEL",
    404: "check AI_BASE_URL (the API root, e.g. .../v1) and AI_MODEL",
}
_MAX_MESSAGE_CHARS = 300


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts as the provider reports them; zeros when it reports none."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.total_tokens + other.total_tokens,
        )

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(frozen=True, slots=True)
class ChatReply:
    content: str | None
    model: str
    usage: Usage
    finish_reason: str | None


def ai_not_configured(settings: Settings) -> str | None:
    """Which settings to set before AI jobs can run, or None when they are set."""
    missing = [
        name
        for name, value in (("AI_BASE_URL", settings.ai_base_url), ("AI_MODEL", settings.ai_model))
        if not value
    ]
    if not missing:
        return None
    return (
        f"AI is not configured: set {' and '.join(missing)} (and AI_API_KEY if the provider needs "
        "one), e.g. AI_BASE_URL=https://api.openai.com/v1 AI_MODEL=gpt-4o-mini, or "
        "AI_BASE_URL=http://localhost:11434/v1 for a local Ollama"
    )


class AIClient:
    """Chat completions in JSON mode, with a concurrency limit and a requests-per-minute budget."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: SecretStr | None = None,
        timeout: float = 60.0,
        max_concurrency: int = 4,
        requests_per_minute: int = 0,
    ) -> None:
        self.model = model
        self._where = redact_url(base_url)
        self._timeout = timeout
        self._key = api_key.get_secret_value() if api_key is not None else ""
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        # httpx is imported when the client is first built, not with the AI family: a worker with
        # AI not configured, a producer or the CLI never loads it (issue 18).
        import httpx

        self._http = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=httpx.Timeout(timeout))
        self._slots = asyncio.Semaphore(max_concurrency)
        self._budget = RequestBudget(requests_per_minute) if requests_per_minute else None

    @classmethod
    def from_settings(cls, settings: Settings) -> AIClient:
        problem = ai_not_configured(settings)
        if problem or settings.ai_base_url is None or settings.ai_model is None:
            raise PermanentError(problem or "AI is not configured")
        return cls(
            base_url=settings.ai_base_url,
            model=settings.ai_model,
            api_key=settings.ai_api_key,
            timeout=settings.ai_timeout,
            max_concurrency=settings.ai_max_concurrency,
            requests_per_minute=settings.ai_requests_per_minute,
        )

    def __repr__(self) -> str:
        return f"<AIClient {self._where} model={self.model!r}>"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def chat_json(
        self, messages: list[dict[str, str]], *, temperature: float, max_tokens: int
    ) -> ChatReply:
        """One chat completion asking for a JSON object; raises TransientError or PermanentError."""
        body = {
            "model": self.model,
            "messages": messages,
            "temperature": temperature,
            "max_tokens": max_tokens,
            "response_format": {"type": "json_object"},
        }
        if self._budget is not None:
            await self._budget.acquire()
        import httpx  # for its exception types; loaded when this client was built

        async with self._slots:
            try:
                # httpx's timeout is per phase; this bounds the whole exchange.
                async with asyncio.timeout(self._timeout):
                    response = await self._http.post("chat/completions", content=orjson.dumps(body))
            except (TimeoutError, httpx.TimeoutException):
                raise TransientError(
                    f"AI API at {self._where} did not answer within {self._timeout:g}s (AI_TIMEOUT)"
                ) from None
            except httpx.TransportError as exc:
                raise TransientError(
                    f"AI API at {self._where} unreachable: {type(exc).__name__}: {exc}"
                ) from None
        return self._read(response)

    def _read(self, response: httpx.Response) -> ChatReply:
        status = response.status_code
        if status in _TRANSIENT_STATUS or status >= 500:
            raise TransientError(
                f"AI API answered {status}: {self._message(response)}",
                retry_after=_retry_after(response.headers),
            )
        if status >= 400 or status < 200:
            hint = _STATUS_HINTS.get(status)
            raise PermanentError(
                f"AI API rejected the request ({status}): {self._message(response)}"
                + (f"; {hint}" if hint else "")
            )
        try:
            data = orjson.loads(response.content)
            choice = data["choices"][0]
            content = choice["message"].get("content")
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
            raise PermanentError(
                f"AI API at {self._where} answered {status} without a chat completion; check that "
                "AI_BASE_URL is the root of an OpenAI-compatible API (e.g. .../v1)"
            ) from None
        return ChatReply(
            content=content if isinstance(content, str) else None,
            model=str(data.get("model") or self.model),
            usage=_usage(data.get("usage")),
            finish_reason=choice.get("finish_reason"),
        )

    def _message(self, response: httpx.Response) -> str:
        """The provider's error message, short and with our API key scrubbed out."""
        text = response.text
        try:
            data = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            data = None
        if isinstance(data, dict):
            error = data.get("error")
            found = error.get("message") if isinstance(error, dict) else error
            found = found or data.get("message") or data.get("detail")
            if isinstance(found, str) and found:
                text = found
        text = " ".join(text.split()) or response.reason_phrase or "(no message)"
        if self._key:
            text = text.replace(self._key, "***")
        return text if len(text) <= _MAX_MESSAGE_CHARS else text[: _MAX_MESSAGE_CHARS - 3] + "..."


def _usage(raw: Any) -> Usage:
    if not isinstance(raw, dict):
        return Usage()

    def count(name: str) -> int:
        value = raw.get(name)
        return value if isinstance(value, int) and value >= 0 else 0

    prompt, completion = count("prompt_tokens"), count("completion_tokens")
    return Usage(prompt, completion, count("total_tokens") or prompt + completion)


def _retry_after(headers: httpx.Headers) -> float | None:
    """Seconds from `retry-after-ms` or `Retry-After` (seconds or an HTTP date), if given."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


async def _create(settings: Settings) -> AIClient:
    return AIClient.from_settings(settings)


async def _close(client: AIClient) -> None:
    await client.aclose()


AI_CLIENT: Resource[AIClient] = Resource("ai", _create, _close)
