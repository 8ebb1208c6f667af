"""HTML out: the Jinja2 environment (every value escaped), the filters templates use, the
security headers every dashboard response carries, and the two static files.

Job names, ids, arguments and errors come from Redis and Postgres, which others may write, so
they are data, never markup: autoescape is on for every template, no template marks a value
safe, and the Content-Security-Policy allows scripts and styles only from the dashboard's own
files (an injected `<script>` would not run even if escaping were bypassed).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote, urlencode

import jinja2
from starlette.responses import HTMLResponse, Response

__all__ = ["SECURITY_HEADERS", "Renderer", "StaticFiles"]

HERE = Path(__file__).parent

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # same-origin, not no-referrer: with no-referrer browsers send `Origin: null` on form posts,
    # and the same-origin check of every form needs the real one.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _utc(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "—"


def _iso(value: datetime | None) -> str:
    return value.astimezone(UTC).isoformat() if value else ""


def _ago(value: datetime | None) -> str:
    if value is None:
        return ""
    seconds = (datetime.now(UTC) - value).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    if seconds < 90:
        text = f"{seconds:.0f} s"
    elif seconds < 5400:
        text = f"{seconds / 60:.0f} min"
    elif seconds < 2 * 86400:
        text = f"{seconds / 3600:.1f} h"
    else:
        text = f"{seconds / 86400:.0f} days"
    return f"in {text}" if future else f"{text} ago"


def _num(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if float(value).is_integer() or abs(value) >= 100 else f"{value:,.1f}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def _q(value: object) -> str:
    """A path segment: every character that is not unreserved is percent-encoded ('/' too)."""
    return quote(str(value), safe="")


def _url(path: str, **params: Any) -> str:
    query = {k: v for k, v in params.items() if v not in (None, "")}
    return f"{path}?{urlencode(query)}" if query else path


def _words(value: str) -> str:
    return value.replace("_", " ")


class Renderer:
    def __init__(self, globals_: Mapping[str, Any]) -> None:
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(utc=_utc, iso=_iso, ago=_ago, num=_num, pct=_pct, q=_q, words=_words)
        self.env.globals.update(url=_url, **globals_)

    def page(
        self,
        template: str,
        context: Mapping[str, Any],
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> HTMLResponse:
        html = self.env.get_template(template).render(**context)
        return HTMLResponse(html, status, headers={**SECURITY_HEADERS, **(headers or {})})


class StaticFiles:
    """The stylesheet and the script, read once and served with a content hash in their URL (so
    they are cached for a day and a new version is fetched at once)."""

    TYPES: ClassVar[dict[str, str]] = {
        ".css": "text/css; charset=utf-8",
        ".js": "text/javascript; charset=utf-8",
    }

    def __init__(self) -> None:
        self._files: dict[str, tuple[bytes, str]] = {}
        self.urls: dict[str, str] = {}
        for path in sorted((HERE / "static").iterdir()):
            if path.suffix not in self.TYPES:
                continue
            body = path.read_bytes()
            self._files[path.name] = (body, self.TYPES[path.suffix])
            self.urls[path.name] = f"/ui/static/{path.name}?v={hashlib.sha256(body).hexdigest()[:12]}"

    def response(self, name: str) -> Response:
        found = self._files.get(name)
        if found is None:
            return Response("not found", 404, headers=SECURITY_HEADERS, media_type="text/plain")
        body, media_type = found
        headers = {**SECURITY_HEADERS, "Cache-Control": "public, max-age=86400"}
        return Response(body, headers=headers, media_type=media_type)
