"""The ops dashboard of `python -m worker serve`, under /ui: server-rendered pages (Jinja2) of
queues, jobs, dead letters, schedules and workers, with actions, refreshed in place by a small
script. `access` (login, sessions, CSRF, roles), `queries` (what pages read), `actions` (what
operators do, audited), `controls` (the seam for named queues, cancel, pause and progress),
`routes`, `render`, `charts`, `cost` (Redis commands and price), `masking` (secrets hidden).
"""

from starlette.routing import BaseRoute

from core.registry import Registry
from settings import Settings
from worker.ops.http.dashboard.routes import Dashboard

__all__ = ["Dashboard", "dashboard_routes"]


def dashboard_routes(settings: Settings, registry: Registry) -> list[BaseRoute]:
    """The /ui routes, for `create_app(..., extra_routes=...)`."""
    return Dashboard(settings, registry).routes()
