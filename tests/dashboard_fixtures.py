"""The ops dashboard for tests: a registry with a schedule, dashboard tokens (an operator and a
viewer), and a logged-in HTTP client that reads CSRF tokens off the page as a browser would."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
from pydantic import SecretStr

from core.codec import encode_job
from core.registry import Registry, Schedule
from settings import Settings
from tests.conftest import raw_redis
from tests.http_fixtures import serving
from tests.sample_jobs import TEST_REGISTRY

__all__ = [
    "DASHBOARD_REGISTRY",
    "OPERATOR_TOKEN",
    "VIEWER_TOKEN",
    "Browserless",
    "dashboard_settings",
    "forge_queued_job",
    "running_dashboard",
]

OPERATOR_TOKEN = "operator-token-0123456789abcdef"
VIEWER_TOKEN = "viewer-token-0123456789abcdef"
# Hourly, at a minute and second nobody will be waiting for in a test run.
DASHBOARD_REGISTRY = Registry(list(TEST_REGISTRY), schedules=[Schedule("ping", minute=17, second=23)])
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def dashboard_settings(settings: Settings, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "dashboard_tokens": SecretStr(f"{OPERATOR_TOKEN}:operator:alice {VIEWER_TOKEN}:viewer:victor"),
        "dashboard_refresh_s": 1.0,
        **overrides,
    }
    return settings.model_copy(update=values)


class Browserless:
    """An HTTP client of the dashboard that keeps its cookies and sends forms like a browser:
    the CSRF token read from the last page, and the Origin header of the dashboard itself."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.csrf: str | None = None

    async def login(self, token: str) -> httpx.Response:
        return await self.client.post("/ui/login", data={"token": token, "next": "/ui/"})

    async def page(self, path: str) -> httpx.Response:
        response = await self.client.get(path)
        found = _CSRF.search(response.text)
        if found:
            self.csrf = found.group(1)
        return response

    async def act(
        self, action: str, form: dict[str, str] | None = None, *, confirm: bool = True, **fields: str
    ) -> httpx.Response:
        if self.csrf is None:
            await self.page("/ui/")
        data = {"csrf": self.csrf or "", "back": "/ui/dead", **(form or {}), **fields}
        if confirm:
            data["confirm"] = "yes"
        return await self.client.post(
            f"/ui/actions/{action}", data=data, headers={"origin": str(self.client.base_url).rstrip("/")}
        )

    async def flash(self) -> str:
        """The message the last action left, as the page it returned to shows it."""
        text = (await self.page("/ui/dead")).text
        found = re.search(r'<div class="flash" role="status">(.*?)</div>', text, re.S)
        return found.group(1) if found else ""


@asynccontextmanager
async def running_dashboard(settings: Settings) -> AsyncIterator[str]:
    async with serving(settings, registry=DASHBOARD_REGISTRY, dashboard=True) as url:
        yield url


async def forge_queued_job(settings: Settings, job_id: str, name: str, kwargs: dict[str, Any]) -> None:
    """A job record written straight into Redis, as anyone with access to a shared Redis could."""
    client = raw_redis(settings)
    now_ms = int(time.time() * 1000)
    await client.set(f"arq:job:{job_id}", encode_job(name, kwargs, enqueue_ms=now_ms))
    await client.zadd(settings.queue_name, {job_id: now_ms + 3_600_000})


def snapshot(worker: str, **fields: Any) -> bytes:
    """A worker snapshot as a worker writes it (for forging one)."""
    return orjson.dumps(
        {
            "worker": worker,
            "host": "h",
            "pid": 1,
            "queue": "q",
            "at": time.time(),
            "running": 0,
            "minutes": {},
        }
        | fields
    )
