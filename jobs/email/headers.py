"""Header-injection checks for every value that ends up in a mail header.

A line break in a header value would let a caller add headers (`Bcc:`) or a body of their
own. Python's email package of 3.11 does not refuse them when it writes a message, so we
refuse them before anything is queued: raw CR/LF and other control characters, and RFC 2047
encoded-words (`=?utf-8?q?a=0D=0Ab?=`) whose decoded text holds them, since some mail
systems decode and re-emit headers.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import unicodedata
from email import quoprimime

__all__ = ["header_problem"]

_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([QqBb])\?([^?\s]*)\?=")
# Unicode line and paragraph separators split lines for str.splitlines(), which email code uses.
_SEPARATORS = {"\u2028", "\u2029", "\x85"}
_MAX_DEPTH = 3


def _control_problem(text: str) -> str | None:
    for ch in text:
        if ch in "\r\n":
            return "contains a line break (CR or LF)"
        if ch in _SEPARATORS or unicodedata.category(ch) == "Cc":
            return f"contains a control character (U+{ord(ch):04X})"
    return None


def _decode_word(charset: str, encoding: str, text: str) -> tuple[bytes, str] | None:
    """The raw bytes and decoded text of one encoded-word, or None if it does not decode."""
    try:
        if encoding in "Qq":
            raw = quoprimime.header_decode(text).encode("latin-1")
        else:
            raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return None
    name = charset.split("*", 1)[0]  # RFC 2231 language suffix: utf-8*en
    try:
        codecs.lookup(name)
        decoded = raw.decode(name, errors="replace")
    except LookupError:
        decoded = raw.decode("latin-1")
    return raw, decoded


def header_problem(value: str, _depth: int = 0) -> str | None:
    """Why `value` may not go into a header, or None if it may."""
    problem = _control_problem(value)
    if problem is not None:
        return problem
    for match in _ENCODED_WORD.finditer(value):
        word = match.group(0)
        decoded = _decode_word(match.group(1), match.group(2), match.group(3))
        if decoded is None:
            return f"contains an RFC 2047 encoded-word that does not decode ({word!r})"
        raw, text = decoded
        if b"\r" in raw or b"\n" in raw or _control_problem(text) is not None:
            return f"contains an encoded line break or control character (RFC 2047 encoded-word {word!r})"
        if _depth < _MAX_DEPTH:
            inner = header_problem(text, _depth + 1)
            if inner is not None:
                return inner
    return None
