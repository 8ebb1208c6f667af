"""The routing decision on its own: every policy against every backend state, no I/O."""

from __future__ import annotations

import pytest

from core.registry import Fallback
from worker.backend import LinkState
from worker.producer.routing import Route, decide

UP, DOWN, DISABLED = LinkState.UP, LinkState.DOWN, LinkState.DISABLED


@pytest.mark.parametrize(
    ("fallback", "inline_if_spool_down", "deferred", "backend", "spool_failed", "route"),
    [
        # Redis up: always try the queue first.
        ("inline", True, False, UP, False, Route.QUEUE),
        ("spool", False, True, UP, False, Route.QUEUE),
        ("reject", True, False, UP, False, Route.QUEUE),
        # Redis down: the job's policy decides.
        ("inline", True, False, DOWN, False, Route.INLINE),
        ("spool", True, False, DOWN, False, Route.SPOOL),
        ("reject", True, False, DOWN, False, Route.REJECT),
        # A deferred job is never run early: spooled whatever its policy, refused if it cannot be.
        ("inline", True, True, DOWN, False, Route.SPOOL),
        ("reject", True, True, DOWN, False, Route.SPOOL),
        ("inline", True, True, DOWN, True, Route.REJECT),
        # Postgres down too: spool-policy jobs run inline only if they allow it.
        ("spool", True, False, DOWN, True, Route.INLINE),
        ("spool", False, False, DOWN, True, Route.REJECT),
        # Redis not configured: nothing to spool for.
        ("inline", True, False, DISABLED, False, Route.INLINE),
        ("spool", False, False, DISABLED, False, Route.INLINE),
        ("reject", True, False, DISABLED, False, Route.REJECT),
        ("inline", True, True, DISABLED, False, Route.REJECT),
    ],
)
def test_each_policy_and_state_has_one_route(
    fallback: Fallback,
    inline_if_spool_down: bool,
    deferred: bool,
    backend: LinkState,
    spool_failed: bool,
    route: Route,
) -> None:
    decision = decide(
        fallback=fallback,
        inline_if_spool_down=inline_if_spool_down,
        deferred=deferred,
        backend=backend,
        spool_failed=spool_failed,
    )
    assert decision.route is route
    # A refusal always says why and what to do; nothing else carries a reason.
    assert bool(decision.reason) == (route is Route.REJECT)
    if route is Route.REJECT:
        assert "retry later" in decision.reason.lower() or "set REDIS_URL" in decision.reason


def test_a_job_too_big_to_run_inline_waits_in_the_spool_or_is_refused() -> None:
    common: dict[str, object] = {"fallback": "inline", "inline_if_spool_down": True, "deferred": False}
    big = "5000 recipients"
    assert decide(**common, backend=DOWN, too_big_inline=big).route is Route.SPOOL  # type: ignore[arg-type]
    refused = decide(**common, backend=DOWN, spool_failed=True, too_big_inline=big)  # type: ignore[arg-type]
    assert refused.route is Route.REJECT
    assert big in refused.reason
    # Redis not configured: the operator chose inline for everything.
    assert decide(**common, backend=DISABLED, too_big_inline=big).route is Route.INLINE  # type: ignore[arg-type]
