"""The ops dashboard in a real browser: Playwright driving Chromium (the distribution's, see
`devservices.chromium`) against the real service, worker, Redis and Postgres. Run with
`make test-browser`; the screenshots in docs/dashboard/ are taken here."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Page, async_playwright, expect

from devservices.chromium import CHROMIUM_ARGS, ensure_chromium
from settings import Settings
from tests.conftest import RunningWorker
from tests.dashboard_fixtures import (
    DASHBOARD_REGISTRY,
    OPERATOR_TOKEN,
    dashboard_settings,
    forge_queued_job,
    running_dashboard,
)
from tests.http_fixtures import TOKEN
from worker.engine import WorkerService
from worker.producer import Producer

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "dashboard"
# Waits for what the page shows after its live refresh (every second here); the throughput
# waits longest: a busy worker reports its counts every 10 s.
SEEN_WITHIN_MS = 20_000
expect.set_options(timeout=SEEN_WITHIN_MS)


@dataclass
class Site:
    url: str
    page: Page
    api: httpx.AsyncClient
    settings: Settings

    async def enqueue(self, job: str, args: dict[str, Any], **options: Any) -> str:
        response = await self.api.post(f"/v1/jobs/{job}", json={"args": args, **options})
        assert response.status_code == 202, response.text
        return str(response.json()["job_id"])

    async def log_in(self) -> None:
        await self.page.goto(f"{self.url}/ui/")
        await expect(self.page.get_by_role("heading", name="Log in")).to_be_visible()
        await self.page.get_by_label("Token").fill(OPERATOR_TOKEN)
        await self.page.get_by_role("button", name="Log in").click()
        await expect(self.page.get_by_role("heading", name="Queues")).to_be_visible()

    async def confirm(self, button: str) -> None:
        """Press the confirmation page's button (every action asks first)."""
        await expect(self.page.get_by_role("heading", name=re.compile("^Confirm"))).to_be_visible()
        await self.page.get_by_role("button", name=button).click()


@pytest.fixture
async def site(settings: Settings) -> AsyncIterator[Site]:
    settings = dashboard_settings(settings)
    service = WorkerService(settings, registry=DASHBOARD_REGISTRY, handle_signals=False)
    worker = RunningWorker(service, asyncio.create_task(service.run()))
    headers = {"authorization": f"Bearer {TOKEN}"}
    try:
        async with (
            running_dashboard(settings) as url,
            httpx.AsyncClient(base_url=url, headers=headers) as api,
            async_playwright() as playwright,
        ):
            browser = await playwright.chromium.launch(executable_path=ensure_chromium(), args=CHROMIUM_ARGS)
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(SEEN_WITHIN_MS)
            try:
                yield Site(url, page, api, settings)
            finally:
                await browser.close()
    finally:
        await worker.stop()


async def test_a_job_enqueued_through_the_api_appears_and_completes_while_the_page_updates(
    site: Site,
) -> None:
    page = site.page
    await site.log_in()
    await page.evaluate("window.notReloaded = true")
    # Deferred jobs show in the overview's queue table at the next refresh, without a reload.
    await site.api.post("/v1/jobs/ping/batch", json={"jobs": [{"args": {}}] * 7, "defer_by": 3600})
    default_row = page.locator("#queues tbody tr").nth(1)  # critical, default, bulk, ai
    await expect(default_row.locator("td").nth(2)).to_have_text("7")
    assert await page.evaluate("window.notReloaded") is True
    # A job that runs for a second: its page follows it to completion.
    job_id = await site.enqueue("sleepy_marked", {"seconds": 1.0})
    await page.goto(f"{site.url}/ui/jobs/{job_id}")
    await page.evaluate("window.notReloaded = true")
    state = page.locator("dl.facts .state")
    await expect(state).to_have_text(re.compile("queued|in progress|complete"))
    await expect(state).to_have_text("complete")
    assert await page.evaluate("window.notReloaded") is True
    await expect(page.locator("pre.json").first).to_contain_text('"job_try": 1')
    await page.screenshot(path=str(SCREENSHOTS / "job.png"), full_page=True)
    # The overview's throughput follows the jobs the worker finishes.
    await site.api.post("/v1/jobs/ping/batch", json={"jobs": [{"args": {"message": "hi"}}] * 40})
    await page.goto(f"{site.url}/ui/")
    await expect(page.locator("#throughput tbody")).to_contain_text("ping")
    await expect(page.locator("#throughput .bar-ok").first).to_be_attached()
    await page.screenshot(path=str(SCREENSHOTS / "overview.png"), full_page=True)


async def test_a_failing_job_reaches_the_dead_letters_and_is_retried_from_the_page(site: Site) -> None:
    page = site.page
    await site.log_in()
    await page.goto(f"{site.url}/ui/dead")
    key = f"browser-{uuid.uuid4().hex[:8]}"
    # flaky fails as many times as it has tries, so it is dead-lettered; a retry then succeeds.
    job_id = await site.enqueue("flaky", {"key": key, "failures": 4})
    await site.enqueue("refuse", {"reason": "the provider said 400: bad address"})
    row = page.locator("tr", has_text=job_id)
    await expect(row).to_contain_text("provider hiccup 4")  # appeared with no reload
    await expect(page.locator("#dead-list")).to_contain_text("bad address")
    await page.screenshot(path=str(SCREENSHOTS / "dead-letters.png"), full_page=True)
    await row.get_by_role("button", name="Retry").click()
    await site.confirm("Yes, retry")
    flash = page.locator(".flash")
    await expect(flash).to_contain_text(f"job {job_id} enqueued again as")
    new_id = re.search(r"enqueued again as (\S+)", await flash.inner_text())
    assert new_id is not None
    await expect(page.locator("tr", has_text=job_id)).to_have_count(0)
    await page.goto(f"{site.url}/ui/jobs/{new_id.group(1)}")
    await expect(page.locator("dl.facts .state")).to_have_text("complete")


async def test_purge_one_dead_letter_then_all(site: Site) -> None:
    page = site.page
    await site.log_in()
    first = await site.enqueue("refuse", {"reason": "one"})
    second = await site.enqueue("refuse", {"reason": "two"})
    await page.goto(f"{site.url}/ui/dead")
    await expect(page.locator("tr", has_text=second)).to_be_visible()
    await page.locator("tr", has_text=first).get_by_role("button", name="Purge").click()
    await site.confirm("Yes, purge")
    await expect(page.locator(".flash")).to_contain_text(f"dead letter {first} purged")
    await expect(page.locator("tr", has_text=first)).to_have_count(0)
    await expect(page.locator("tr", has_text=second)).to_be_visible()
    await page.get_by_role("button", name="Purge all").click()
    await site.confirm("Yes, purge")
    await expect(page.locator(".flash")).to_contain_text("(all dead letters)")
    await expect(page.locator("#dead-list")).to_contain_text("No dead letters")


async def test_a_forged_job_name_with_a_script_is_shown_as_text(site: Site) -> None:
    page = site.page
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    forged = "<script>window.pwned = 1; alert('pwned')</script>"
    await forge_queued_job(site.settings, "forged:browser", forged, {"note": forged})
    async with Producer(site.settings, registry=DASHBOARD_REGISTRY) as producer:
        error = {"type": "Forged", "message": '<img src=x onerror="window.pwned = 2">', "kind": "permanent"}
        await producer.ledger.dead_letter(
            job_id="forged:browser-dead", name=forged, kwargs={}, error=error, tries=1, mode="queued",
            enqueue_time=None,
        )  # fmt: skip
    await site.log_in()
    for path in ["/ui/jobs?state=deferred", "/ui/jobs/forged:browser", "/ui/dead"]:
        await page.goto(f"{site.url}{path}")
        await expect(page.get_by_text(forged).first).to_be_visible()
        assert await page.evaluate("typeof window.pwned") == "undefined"
    await expect(page.get_by_text('<img src=x onerror="window.pwned = 2">')).to_be_visible()
    await page.wait_for_timeout(1500)  # a live refresh swaps the rows in again: still text
    assert await page.evaluate("typeof window.pwned") == "undefined"
    assert dialogs == []
