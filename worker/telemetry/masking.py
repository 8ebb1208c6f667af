"""What may leave the process of a job's arguments, result and error: the dashboard's pages,
Sentry reports and OpenTelemetry spans all use these rules. Values of fields named like secrets
are replaced whole (not even their length shows), URL passwords are hidden, and every configured
secret (API keys, tokens, passwords in URLs) is cut out of any text that echoes it.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from settings import redact_url

__all__ = ["MASK", "Masker"]

MASK = "•••••• (masked)"

# Field names whose values are secrets: password, passwd, pwd, secret, token, api_key, apikey,
# auth, authorization, credential(s), private_key, session, cookie, signature, otp, pin.
_SECRET_NAME = re.compile(
    r"(?i)(pass(word|wd|phrase)?|pwd|secret|token|api[_-]?key|apikey|auth|credential|private[_-]?key"
    r"|session|cookie|signature|^otp$|^pin$|^cvv$|^ssn$)"
)
# Longest argument text a page shows; a bigger one is cut with a note of what was left out.
_MAX_SHOWN = 20_000


class Masker:
    def __init__(self, secrets: list[str]) -> None:
        self._secrets = [s for s in secrets if len(s) >= 4]

    def text(self, value: str) -> str:
        """A string with configured secrets and URL passwords hidden."""
        for secret in self._secrets:
            if secret in value:
                value = value.replace(secret, "***")
        return redact_url(value) if "://" in value else value

    def value(self, data: Any, name: str | None = None) -> Any:
        """`data` (decoded JSON) with secret-named fields masked, recursively."""
        if name is not None and _SECRET_NAME.search(name) and data not in (None, "", [], {}):
            return MASK
        if isinstance(data, dict):
            return {str(k): self.value(v, str(k)) for k, v in data.items()}
        if isinstance(data, list):
            return [self.value(v) for v in data]
        if isinstance(data, str):
            return self.text(data)
        return data

    def json(self, data: Any) -> str:
        """Masked, indented JSON for a <pre> block, cut at a size a page can carry."""
        text = orjson.dumps(self.value(data), option=orjson.OPT_INDENT_2).decode()
        if len(text) > _MAX_SHOWN:
            return text[:_MAX_SHOWN] + f"\n… ({len(text) - _MAX_SHOWN:,} more characters not shown)"
        return text
