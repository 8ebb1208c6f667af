"""The ops dashboard over real HTTP, on real Redis and Postgres with a worker: every page and
action, login and sessions, CSRF and same-origin refusals, the read-only role, masked secrets,
and forged values from a shared Redis rendered as text."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from core.flow import queue_key
from devservices.redis import RedisServer
from settings import Settings
from tests.conftest import RunningWorker, eventually, make_settings, raw_redis
from tests.dashboard_fixtures import (
    DASHBOARD_REGISTRY,
    OPERATOR_TOKEN,
    VIEWER_TOKEN,
    Browserless,
    dashboard_settings,
    forge_queued_job,
    running_dashboard,
    snapshot,
)
from tests.http_fixtures import TOKEN
from worker.engine import WorkerService
from worker.ops.http.dashboard.controls import queue_names
from worker.ops.http.dashboard.queries import redis_commands_per_overview
from worker.producer import Producer

SCRIPT = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
PAGES = [
    "/ui/",
    "/ui/jobs",
    "/ui/jobs?state=deferred",
    "/ui/jobs?state=in_progress",
    "/ui/jobs?state=spooled",
]
PAGES += ["/ui/dead", "/ui/schedules", "/ui/workers"]


@pytest.fixture
async def ui(settings: Settings) -> AsyncIterator[tuple[Browserless, Settings]]:
    """A logged-in operator on a dashboard with a worker running the jobs."""
    settings = dashboard_settings(settings)
    service = WorkerService(settings, registry=DASHBOARD_REGISTRY, handle_signals=False)
    worker = RunningWorker(service, asyncio.create_task(service.run()))
    try:
        async with running_dashboard(settings) as url, httpx.AsyncClient(base_url=url) as client:
            browser = Browserless(client)
            assert (await browser.login(OPERATOR_TOKEN)).status_code == 303
            yield browser, settings
    finally:
        await worker.stop()


async def _dead_job(browser: Browserless, job: str, args: dict[str, object]) -> str:
    """Enqueue `job` through the API and wait for it to reach the dead letters."""
    api = {"authorization": f"Bearer {TOKEN}"}
    job_id = (await browser.client.post(f"/v1/jobs/{job}", json={"args": args}, headers=api)).json()["job_id"]

    async def dead() -> bool:
        return bool((await browser.client.get(f"/v1/jobs/{job_id}", headers=api)).json()["status"] == "dead")

    await eventually(dead, what=f"job {job_id} to be dead-lettered")
    return str(job_id)


async def test_login_sets_a_strict_http_only_cookie_and_a_wrong_token_is_refused(settings: Settings) -> None:
    settings = dashboard_settings(settings)
    async with running_dashboard(settings) as url, httpx.AsyncClient(base_url=url) as client:
        first = await client.get("/ui/jobs?state=deferred")
        assert first.status_code == 303
        assert first.headers["location"] == "/ui/login?next=%2Fui%2Fjobs%3Fstate%3Ddeferred"
        login_page = await client.get(first.headers["location"])
        assert login_page.status_code == 200
        assert "DASHBOARD_TOKENS" in login_page.text
        wrong = await client.post("/ui/login", data={"token": "not-a-token-of-ours-at-all", "next": "/ui/"})
        assert wrong.status_code == 401
        assert "not one of the dashboard" in wrong.text
        assert "set-cookie" not in wrong.headers
        # The API token does not log in when DASHBOARD_TOKENS is set.
        assert (await client.post("/ui/login", data={"token": TOKEN})).status_code == 401
        ok = await client.post("/ui/login", data={"token": OPERATOR_TOKEN, "next": "/ui/jobs?state=deferred"})
        assert ok.status_code == 303
        assert ok.headers["location"] == "/ui/jobs?state=deferred"
        cookie = ok.headers["set-cookie"].lower()
        for attribute in ("httponly", "samesite=strict", "path=/ui"):
            assert attribute in cookie
        assert OPERATOR_TOKEN.lower() not in cookie
        page = await client.get("/ui/jobs?state=deferred")
        assert page.status_code == 200
        assert "alice" in page.text
        assert OPERATOR_TOKEN not in page.text
        # An open redirect is not possible through `next`.
        again = await client.post(
            "/ui/login", data={"token": OPERATOR_TOKEN, "next": "https://evil.example/"}
        )
        assert again.headers["location"] == "/ui/"


async def test_a_tampered_cookie_is_no_session_and_logout_ends_it(settings: Settings) -> None:
    settings = dashboard_settings(settings)
    async with running_dashboard(settings) as url, httpx.AsyncClient(base_url=url) as client:
        browser = Browserless(client)
        await browser.login(OPERATOR_TOKEN)
        cookie = client.cookies["mb_dashboard"]
        payload, _, signature = cookie.partition(".")
        forged = httpx.AsyncClient(base_url=url, cookies={"mb_dashboard": payload + "." + signature[::-1]})
        async with forged:
            assert (await forged.get("/ui/")).status_code == 303
        await browser.page("/ui/")
        out = await client.post("/ui/logout", data={"csrf": browser.csrf or ""})
        assert out.status_code == 303
        assert out.headers["location"] == "/ui/login"
        assert (await client.get("/ui/")).status_code == 303


async def test_repeated_wrong_tokens_are_throttled(settings: Settings) -> None:
    settings = dashboard_settings(settings)
    async with running_dashboard(settings) as url, httpx.AsyncClient(base_url=url) as client:
        codes = [
            (await client.post("/ui/login", data={"token": f"wrong-{n:020d}"})).status_code for n in range(11)
        ]
        assert codes == [401] * 10 + [429]
        assert (await client.post("/ui/login", data={"token": OPERATOR_TOKEN})).status_code == 429


async def test_every_page_renders_with_its_security_headers(ui: tuple[Browserless, Settings]) -> None:
    browser, _ = ui
    for path in PAGES:
        response = await browser.page(path)
        assert response.status_code == 200, path
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "no-store"
        assert "<script>" not in response.text  # the only script is the file, loaded by src
    script = await browser.client.get(re.findall(r'src="(/ui/static/dashboard\.js[^"]*)"', response.text)[0])
    assert script.status_code == 200
    assert "data-live" in script.text
    assert (await browser.client.get("/ui/static/../app.py")).status_code == 404
    assert (await browser.client.get("/ui/jobs?state=complete")).status_code == 400
    assert (await browser.client.get("/ui/jobs?page=0")).status_code == 400


async def test_a_job_page_shows_its_arguments_with_secrets_masked_and_its_result(
    ui: tuple[Browserless, Settings],
) -> None:
    browser, _ = ui
    args = {"data": {"user": "zoe", "password": "hunter2-not-shown", "nested": [{"api_key": "sk-live-zzz"}],
                     "callback": "https://bob:pa55word@example.com/hook"}}  # fmt: skip
    api = {
        "authorization": f"Bearer {TOKEN}",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    }
    job_id = (
        await browser.client.post("/v1/jobs/takes_any", json={"args": args, "wait": 5}, headers=api)
    ).json()["job_id"]
    page = await browser.page(f"/ui/jobs/{job_id}")
    assert page.status_code == 200
    text = page.text
    for secret in ("hunter2-not-shown", "sk-live-zzz", "pa55word"):
        assert secret not in text
    assert "zoe" in text
    assert "(masked)" in text
    assert "bob:***@example.com" in text
    assert "state-complete" in text
    assert "4bf92f3577b34da6a3ce929d0e0e4736" in text
    assert "started (try 1)" in text
    assert "finished" in text
    missing = await browser.page("/ui/jobs/no-such-job-here")
    assert missing.status_code == 404
    assert "No job with this id" in missing.text
    found = await browser.client.get("/ui/jobs", params={"id": job_id})
    assert found.status_code == 303
    assert found.headers["location"] == f"/ui/jobs/{job_id}"


async def test_forged_names_ids_and_errors_from_a_shared_redis_render_as_text(
    ui: tuple[Browserless, Settings],
) -> None:
    browser, settings = ui
    await forge_queued_job(settings, "forged:1", SCRIPT, {"x": SCRIPT})
    await raw_redis(settings).zadd(settings.queue_name, {f"id-{SCRIPT}": 9_999_999_999_999})
    await raw_redis(settings).set(
        "mb:stats:worker:forged", snapshot(f"w{SCRIPT}", host=SCRIPT, queue=settings.queue_name)
    )
    await raw_redis(settings).zadd("mb:workers", {"forged": 9_999_999_999_999})
    async with Producer(settings, registry=DASHBOARD_REGISTRY) as producer:
        error = {"type": SCRIPT, "message": f"<img src=x onerror=alert(2)>{SCRIPT}", "kind": "permanent"}
        await producer.ledger.dead_letter(
            job_id="forged:dead",
            name=SCRIPT,
            kwargs={},
            error=error,
            tries=1,
            mode="queued",
            enqueue_time=None,
        )
    try:
        pages = [
            "/ui/jobs?state=deferred",
            "/ui/jobs/forged:1",
            "/ui/dead",
            "/ui/jobs/forged:dead",
            "/ui/workers",
        ]
        for path in pages:
            text = (await browser.page(path)).text
            assert SCRIPT not in text, path
            assert "<img src=x" not in text, path
            assert ESCAPED in text, path
        listed = (await browser.page("/ui/jobs?state=deferred")).text
        assert 'href="/ui/jobs/id-%3Cscript%3Ealert%281%29%3C%2Fscript%3E"' in listed
    finally:
        await browser.act("purge", job_id="forged:dead")


async def test_actions_refuse_a_missing_csrf_token_another_origin_and_no_session(
    ui: tuple[Browserless, Settings],
) -> None:
    browser, _ = ui
    job_id = await _dead_job(browser, "refuse", {"reason": "csrf"})
    await browser.page("/ui/dead")
    client = browser.client
    origin = {"origin": str(client.base_url).rstrip("/")}
    no_token = await client.post(
        "/ui/actions/purge", data={"job_id": job_id, "confirm": "yes"}, headers=origin
    )
    wrong = await client.post(
        "/ui/actions/purge", data={"job_id": job_id, "confirm": "yes", "csrf": "x" * 32}, headers=origin
    )
    other_site = await client.post(
        "/ui/actions/purge",
        data={"job_id": job_id, "confirm": "yes", "csrf": browser.csrf or ""},
        headers={"origin": "https://evil.example"},
    )
    assert [no_token.status_code, wrong.status_code, other_site.status_code] == [403, 403, 403]
    assert "stale or came from elsewhere" in wrong.text
    assert "another site" in other_site.text
    async with httpx.AsyncClient(base_url=client.base_url) as stranger:
        anonymous = await stranger.post("/ui/actions/purge", data={"job_id": job_id, "confirm": "yes"})
        assert anonymous.status_code == 401
    assert job_id in (await browser.page("/ui/dead")).text  # still there


async def test_a_viewer_sees_but_cannot_act(ui: tuple[Browserless, Settings]) -> None:
    browser, _ = ui
    job_id = await _dead_job(browser, "refuse", {"reason": "viewer"})
    async with httpx.AsyncClient(base_url=browser.client.base_url) as client:
        viewer = Browserless(client)
        await viewer.login(VIEWER_TOKEN)
        page = await viewer.page("/ui/dead")
        assert job_id in page.text
        assert "read-only" in page.text
        assert "/ui/actions/" not in page.text  # no action forms at all
        refused = await viewer.act("retry", job_id=job_id)
        assert refused.status_code == 403
        assert "viewer" in refused.text
    assert job_id in (await browser.page("/ui/dead")).text


async def test_retry_from_the_page_asks_first_then_runs_the_job_to_completion(
    ui: tuple[Browserless, Settings],
) -> None:
    browser, _ = ui
    key = f"retry-{uuid.uuid4().hex[:8]}"
    # flaky fails transiently as often as it has tries (4), then succeeds: the retry completes it.
    job_id = await _dead_job(browser, "flaky", {"key": key, "failures": 4})
    confirm = await browser.act("retry", confirm=False, job_id=job_id)
    assert confirm.status_code == 200
    assert "Enqueue job" in confirm.text
    assert 'name="confirm" value="yes"' in confirm.text
    assert job_id in (await browser.page("/ui/dead")).text  # nothing done yet
    done = await browser.act("retry", job_id=job_id)
    assert done.status_code == 303
    assert done.headers["location"] == "/ui/dead"
    message = await browser.flash()
    new_id = re.search(r"enqueued again as (\S+) \(queued\)", message)
    assert new_id is not None, message

    async def completed() -> bool:
        return "state-complete" in (await browser.page(f"/ui/jobs/{new_id.group(1)}")).text

    await eventually(completed, what="the retried job to complete")
    overview = (await browser.page("/ui/")).text
    assert "alice" in overview
    assert "retry" in overview
    assert job_id in overview
    assert job_id not in (await browser.page("/ui/dead")).text


async def test_purge_one_a_filter_and_all(ui: tuple[Browserless, Settings]) -> None:
    browser, settings = ui
    name_a, name_b = f"purge_a_{uuid.uuid4().hex[:6]}", f"purge_b_{uuid.uuid4().hex[:6]}"
    async with Producer(settings, registry=DASHBOARD_REGISTRY) as producer:
        for n, name in enumerate([name_a, name_a, name_a, name_b, name_b]):
            await producer.ledger.dead_letter(
                job_id=f"{name}:{n}", name=name, kwargs={}, error={"message": "x"}, tries=1, mode="queued",
                enqueue_time=None,
            )  # fmt: skip
    await browser.act("purge", job_id=f"{name_a}:0")
    assert f"dead letter {name_a}:0 purged" in await browser.flash()
    filtered = (await browser.page(f"/ui/dead?name={name_a}")).text
    assert "2 dead letters of" in filtered
    confirm = await browser.act("purge", confirm=False, job_name=name_a)
    assert f"Delete dead letters of job {name_a} for good" in confirm.text
    await browser.act("purge", job_name=name_a)
    assert f"purged 2 (dead letters of job {name_a})" in await browser.flash()
    assert f"{name_b}:3" in (await browser.page("/ui/dead")).text
    assert "not a number of days" in (await browser.act("purge", older_than_days="soon")).text
    await browser.act("purge", scope="all")
    assert re.search(r"purged \d+ \(all dead letters\)", await browser.flash())
    assert "No dead letters" in (await browser.page("/ui/dead")).text


async def test_run_a_schedule_now(ui: tuple[Browserless, Settings]) -> None:
    browser, _ = ui
    page = (await browser.page("/ui/schedules")).text
    assert "23 17 * * * *" in page
    assert "Run now" in page
    await browser.act("run-schedule", job="ping")
    found = re.search(r"ping enqueued now as (cron:ping:now-\d+) \(queued\)", await browser.flash())
    assert found is not None

    async def ran() -> bool:
        return "state-complete" in (await browser.page(f"/ui/jobs/{found.group(1)}")).text

    await eventually(ran, what="the scheduled job to run")
    await browser.act("run-schedule", job="record")
    assert "record has no schedule" in await browser.flash()


async def test_cancel_pause_and_resume_act_through_the_producer(ui: tuple[Browserless, Settings]) -> None:
    browser, settings = ui
    api = {"authorization": f"Bearer {TOKEN}"}
    job_id = (
        await browser.client.post(
            "/v1/jobs/record", json={"args": {"key": "c"}, "defer_by": 3600}, headers=api
        )
    ).json()["job_id"]
    bulk = queue_key(settings, "bulk")
    for action, field, value, said in [
        ("cancel", "job_id", job_id, f"job {job_id} was waiting: removed"),
        ("pause", "queue", bulk, "queue bulk paused"),
        ("resume", "queue", bulk, "queue bulk resumed"),
    ]:
        confirm = await browser.act(action, {field: value}, confirm=False)
        assert confirm.status_code == 200
        assert "Confirm" in confirm.text
        assert (await browser.act(action, {field: value})).status_code == 303
        assert said in await browser.flash()
    status = (await browser.client.get(f"/v1/jobs/{job_id}", headers=api)).json()
    assert status["status"] == "cancelled"


async def test_jobs_lists_page_and_filter_by_name(ui: tuple[Browserless, Settings]) -> None:
    browser, _ = ui
    api = {"authorization": f"Bearer {TOKEN}"}
    jobs = [{"args": {"key": f"k{n}"}} for n in range(55)]
    await browser.client.post("/v1/jobs/record/batch", json={"jobs": jobs, "defer_by": 3600}, headers=api)
    await browser.client.post(
        "/v1/jobs/ping/batch", json={"jobs": [{"args": {}}] * 3, "defer_by": 3600}, headers=api
    )
    first = (await browser.page("/ui/jobs?state=deferred")).text
    assert "58 deferred jobs" in first
    assert first.count("state-deferred") == 50
    assert 'rel="next"' in first
    second = (await browser.page("/ui/jobs?state=deferred&page=2")).text
    assert second.count("state-deferred") == 8
    assert 'rel="next"' not in second
    deep = (await browser.page("/ui/jobs?state=deferred&page=2001")).text
    assert "Pages past 2,000 are not shown" in deep
    pings = (await browser.page("/ui/jobs?state=deferred&name=ping")).text
    assert pings.count("state-deferred") == 3
    overview = (await browser.page("/ui/")).text
    assert re.search(r'state=deferred">58<', overview)


async def test_an_overview_costs_the_redis_commands_it_says(
    settings: Settings, redis_server: RedisServer
) -> None:
    settings = dashboard_settings(settings)
    async with running_dashboard(settings) as url, httpx.AsyncClient(base_url=url) as client:
        await Browserless(client).login(OPERATOR_TOKEN)
        await client.get("/ui/")  # scripts loaded, connections open
        info = raw_redis(settings)
        before = (await info.info("stats"))["total_commands_processed"]
        page = await client.get("/ui/")
        after = (await info.info("stats"))["total_commands_processed"]
    assert page.status_code == 200
    said = redis_commands_per_overview(len(queue_names(settings)))
    assert f"costs about {said} commands" in page.text
    assert 0 < after - before - 1 <= said  # minus the first INFO itself


async def test_pages_still_render_with_redis_down_and_say_why(own_redis: RedisServer) -> None:
    settings = dashboard_settings(make_settings(own_redis.url))
    async with running_dashboard(settings) as url, httpx.AsyncClient(base_url=url) as client:
        await Browserless(client).login(OPERATOR_TOKEN)
        own_redis.stop()
        for path in ["/ui/", "/ui/jobs", "/ui/workers", "/ui/jobs/some-id"]:
            response = await client.get(path)
            assert response.status_code == 200, path
            assert "Redis" in response.text, path
            assert 'class="problems"' in response.text, path
        overview = (await client.get("/ui/")).text
        assert "breaker open" in overview
