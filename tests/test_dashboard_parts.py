"""The dashboard's pure parts: the Redis cost arithmetic, masking, sessions and the hour chart;
and the development mode without tokens."""

from __future__ import annotations

import time

import httpx
from pydantic import SecretStr

from settings import Settings
from tests.dashboard_fixtures import OPERATOR_TOKEN, VIEWER_TOKEN, dashboard_settings, running_dashboard
from worker.backend import CommandStats
from worker.ops.http.dashboard.access import Access
from worker.ops.http.dashboard.charts import chart, hour_of_snapshots, total_of
from worker.ops.http.dashboard.cost import CommandRate
from worker.ops.http.dashboard.masking import MASK, Masker


def test_commands_per_day_from_two_readings_and_the_price() -> None:
    rate = CommandRate()
    first = rate.add(CommandStats(total_commands=8_640, uptime_s=86_400), now=1000.0)
    assert first.per_day == 8_640  # the average since the server started, until a second reading
    assert "since Redis started" in first.basis
    cost = rate.add(CommandStats(total_commands=8_640 + 600, uptime_s=86_460), now=1060.0)
    assert cost.per_day == 864_000  # 10 a second
    assert cost.budget_share == 86.4
    assert round(cost.cost_per_day_usd, 4) == 1.728  # $0.20 per 100,000
    restarted = rate.add(CommandStats(total_commands=50, uptime_s=5), now=1070.0)
    assert restarted.per_day == 864_000  # a counter that went back means a restart: start over


def test_masking_hides_secret_fields_urls_and_configured_secrets() -> None:
    masker = Masker(["configured-secret-value"])
    shown = masker.value(
        {
            "user": "zoe",
            "password": "x",
            "api_key": {"a": 1},
            "nested": [{"refresh_token": "t"}, "see configured-secret-value here"],
            "dsn": "postgresql://app:hunter2@db/x",
            "secret": None,
        }
    )
    assert shown == {
        "user": "zoe",
        "password": MASK,
        "api_key": MASK,
        "nested": [{"refresh_token": MASK}, "see *** here"],
        "dsn": "postgresql://app:***@db/x",
        "secret": None,
    }


def test_sessions_end_when_tampered_expired_or_their_token_is_removed(settings: Settings) -> None:
    secret = SecretStr("s" * 40)
    both = dashboard_settings(settings, dashboard_session_secret=secret)
    access = Access(both)
    found = access.login(OPERATOR_TOKEN)
    assert found is not None
    cookie = access.issue(found[1])
    session = access.session(cookie)
    assert session is not None
    assert session.operator.who == "alice"
    assert session.operator.may_act
    assert access.session(cookie[:-2] + "xx") is None
    viewer = access.login(VIEWER_TOKEN)
    assert viewer is not None
    assert not viewer[0].may_act
    # The same secret, the operator's token removed: the old cookie no longer opens a session.
    only_viewer = dashboard_settings(
        settings, dashboard_session_secret=secret, dashboard_tokens=SecretStr(VIEWER_TOKEN + ":viewer")
    )
    assert Access(only_viewer).session(cookie) is None
    short = Access(
        dashboard_settings(settings, dashboard_session_secret=secret, dashboard_session_hours=0.0001)
    )
    expiring = short.issue(found[1])
    assert short.session(expiring) is not None
    time.sleep(0.4)
    assert short.session(expiring) is None


def test_the_hour_chart_sums_workers_by_minute() -> None:
    now = 1_800_000_000.0
    minute = int(now // 60)
    snapshots = [
        {
            "minutes": {
                str(minute): {"ping": {"complete": 3, "failed": 1}},
                str(minute - 90): {"ping": {"complete": 9}},
            }
        },
        {"minutes": {str(minute): {"ping": {"complete": 2}}, str(minute - 59): {"send_email": {"retry": 4}}}},
    ]
    hours = hour_of_snapshots(snapshots, now)
    assert [h.job for h in hours] == ["ping", "send_email"]
    ping = hours[0]
    assert ping.complete[-1] == 5  # the current minute, both workers
    assert ping.failed[-1] == 1
    assert sum(ping.complete) == 5  # 90 minutes ago is outside the hour
    assert hours[1].retry[0] == 4
    drawn = chart(total_of(hours), width=600, height=100, now=now)
    assert drawn.peak == 6
    assert drawn.bars[-1].ok_height == round(100 * 5 / 6, 2)
    assert "6 finished, 1 failed" in drawn.bars[-1].title


async def test_without_tokens_on_loopback_the_dashboard_opens_without_login(settings: Settings) -> None:
    dev = settings.model_copy(update={"api_dev_no_auth": True, "api_tokens": None, "dashboard_tokens": None})
    async with running_dashboard(dev) as url, httpx.AsyncClient(base_url=url) as client:
        page = await client.get("/ui/")
        assert page.status_code == 200
        assert "no auth (API_DEV_NO_AUTH)" in page.text
        assert "samesite=strict" in page.headers["set-cookie"].lower()
