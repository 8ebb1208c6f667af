"""The dashboard's routes under /ui: pages (GET, read-only) and forms (POST: login, logout and
actions), each behind the session check, every form behind the CSRF and same-origin checks,
every action behind the operator role and a confirmation page.

An action's form posts once to show what it will do (a confirmation page carrying the same
fields), and again with `confirm=yes` to do it; the result comes back as a signed one-time
message on the page the operator came from (post, redirect, get: a reload repeats nothing).
"""

from __future__ import annotations

import traceback
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import structlog
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from core.registry import Registry
from settings import Settings
from worker.ops.http.dashboard import controls, queries
from worker.ops.http.dashboard.access import SESSION_COOKIE, Access, LoginThrottle, Session
from worker.ops.http.dashboard.actions import ActionRefused, Actions, PurgeScope
from worker.ops.http.dashboard.cost import FREE_COMMANDS_PER_DAY, PRICE_PER_COMMAND_USD, CommandRate
from worker.ops.http.dashboard.masking import Masker
from worker.ops.http.dashboard.render import SECURITY_HEADERS, Renderer, StaticFiles
from worker.producer import Producer

__all__ = ["Dashboard"]

log = structlog.get_logger(__name__)

FLASH_COOKIE = "mb_dashboard_flash"
_MAX_FORM_BYTES = 16 * 1024
_MAX_FIELD = 512
PageHandler = Callable[[Request, Session, Producer], Awaitable[Response]]


class _Refusal(Exception):
    """A request answered with an error page (status, title, message)."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status, self.title, self.message = status, title, message


def _local(target: str | None, default: str = "/ui/") -> str:
    """`target` if it is a path of this dashboard, else `default` (no open redirects)."""
    if not target:
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/ui") or target.startswith("//"):
        return default
    return target


def _field(form: dict[str, str], name: str, *, required: bool = False) -> str | None:
    value = form.get(name, "").strip()
    if required and not value:
        raise _Refusal(400, "Missing field", f"the form has no {name}; go back and try again")
    return value or None


class Dashboard:
    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        self.access = Access(settings)
        self.throttle = LoginThrottle()
        self.actions = Actions(registry)
        self.rate = CommandRate()
        self.masker = Masker(settings.secret_values())
        self.static = StaticFiles()
        self.renderer = Renderer(
            {
                "static": self.static.urls,
                "refresh_s": settings.dashboard_refresh_s,
                "job_names": registry.names(),
                "free_per_day": FREE_COMMANDS_PER_DAY,
                "price_per_100k": PRICE_PER_COMMAND_USD * 100_000,
            }
        )

    def routes(self) -> list[BaseRoute]:
        page = self._page
        return [
            Route("/ui", page(self.overview), methods=["GET"]),
            Route("/ui/", page(self.overview), methods=["GET"]),
            Route("/ui/jobs", page(self.jobs), methods=["GET"]),
            Route("/ui/jobs/{job_id:path}", page(self.job), methods=["GET"]),
            Route("/ui/dead", page(self.dead), methods=["GET"]),
            Route("/ui/schedules", page(self.schedules), methods=["GET"]),
            Route("/ui/workers", page(self.workers), methods=["GET"]),
            Route("/ui/login", self.login_page, methods=["GET"]),
            Route("/ui/login", self.login, methods=["POST"]),
            Route("/ui/logout", self.logout, methods=["POST"]),
            Route("/ui/actions/{action}", self.act, methods=["POST"]),
            Route("/ui/static/{name}", self.static_file, methods=["GET"]),
        ]

    # -- plumbing ----------------------------------------------------------------------------------

    def _sources(self, producer: Producer) -> queries.Sources:
        return queries.Sources(producer, self.settings, self.registry, self.masker, self.rate)

    def _error(self, request: Request, refusal: _Refusal, session: Session | None = None) -> Response:
        context = {
            "title": refusal.title,
            "message": refusal.message,
            "session": session,
            "flash": None,
            "section": None,
        }
        return self.renderer.page("message.html", context, status=refusal.status)

    def _render(
        self, request: Request, session: Session, template: str, context: dict[str, Any], *, status: int = 200
    ) -> Response:
        flash = self.access.unseal(request.cookies.get(FLASH_COOKIE))
        full = {"session": session, "flash": flash, "here": _here(request), **context}
        response = self.renderer.page(template, full, status=status)
        if flash is not None:
            response.delete_cookie(FLASH_COOKIE, path="/ui")
        return response

    def _session(self, request: Request) -> tuple[Session | None, str | None]:
        """The request's session, and a new cookie value when one was made (no login needed)."""
        session = self.access.session(request.cookies.get(SESSION_COOKIE))
        if session is None and self.access.open:
            cookie = self.access.issue("open")
            return self.access.session(cookie), cookie
        return session, None

    def _set_session(self, request: Request, response: Response, cookie: str) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            max_age=int(self.access.lifetime_s),
            path="/ui",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )

    def _page(self, handler: PageHandler) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            session, new_cookie = self._session(request)
            if session is None:
                login = f"/ui/login?{_qs(next=_here(request))}"
                return RedirectResponse(login, 303, headers=SECURITY_HEADERS)
            try:
                response = await handler(request, session, self._producer(request))
            except _Refusal as refusal:
                response = self._error(request, refusal, session)
            except Exception as exc:  # the HTTP boundary: one log line, a page that says so
                log.error(
                    "dashboard page failed",
                    path=request.url.path,
                    error=f"{type(exc).__name__}: {exc}",
                    traceback="".join(traceback.format_exception(exc)),
                )
                failure = _Refusal(
                    500, "Something failed", "the page could not be drawn; see the service's log"
                )
                response = self._error(request, failure, session)
            if new_cookie is not None:
                self._set_session(request, response, new_cookie)
            return response

        run.__name__ = handler.__name__
        return run

    @staticmethod
    def _producer(request: Request) -> Producer:
        producer: Producer | None = request.app.state.api.producer
        if producer is None:
            raise _Refusal(503, "Not ready", "the service is starting or stopping; reload in a moment")
        return producer

    @staticmethod
    def _same_origin(request: Request) -> None:
        """Refuse a form posted from another site (the browser says where it came from)."""
        origin = request.headers.get("origin")
        own = f"{request.url.scheme}://{request.headers.get('host', '')}"
        if origin is not None and origin != own:
            raise _Refusal(403, "Refused", "this form was sent from another site; use the dashboard itself")
        if request.headers.get("sec-fetch-site") in ("cross-site", "same-site"):
            raise _Refusal(403, "Refused", "this form was sent from another site; use the dashboard itself")

    @staticmethod
    async def _form(request: Request) -> dict[str, str]:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > _MAX_FORM_BYTES:
                raise _Refusal(413, "Too large", "the form is larger than any the dashboard sends")
        try:
            fields = parse_qs(body.decode(), keep_blank_values=True, max_num_fields=20)
        except (UnicodeDecodeError, ValueError):
            raise _Refusal(
                400, "Bad form", "the form could not be read; reload the page and try again"
            ) from None
        return {k: v[0][:_MAX_FIELD] for k, v in fields.items()}

    # -- pages ------------------------------------------------------------------------------------

    async def overview(self, request: Request, session: Session, producer: Producer) -> Response:
        data = await queries.overview(self._sources(producer))
        context = {"o": data, "recent": list(self.actions.recent)[:10], "section": "overview"}
        return self._render(request, session, "overview.html", context)

    async def jobs(self, request: Request, session: Session, producer: Producer) -> Response:
        params = request.query_params
        job_id = (params.get("id") or "").strip()
        if job_id:
            return RedirectResponse(f"/ui/jobs/{_quote(job_id[:_MAX_FIELD])}", 303, headers=SECURITY_HEADERS)
        state = params.get("state") or "queued"
        if state not in queries.LIST_STATES:
            raise _Refusal(400, "Unknown state", f"jobs can be listed as {', '.join(queries.LIST_STATES)}")
        if state == "dead":
            return RedirectResponse(f"/ui/dead?{_qs(name=params.get('name'))}", 303, headers=SECURITY_HEADERS)
        queues = controls.queue_names(self.settings)
        queue = params.get("queue") or self.settings.queue_name  # the default queue
        if queue not in queues:
            raise _Refusal(400, "Unknown queue", f"the queues are {', '.join(queues)}")
        page = _page_number(params.get("page"))
        name = (params.get("name") or "").strip()[:200] or None
        data = await queries.jobs_page(
            self._sources(producer), state=state, queue=queue, name=name, page=page
        )
        context = {"p": data, "queues": queues, "states": queries.LIST_STATES, "section": "jobs"}
        return self._render(request, session, "jobs.html", context)

    async def job(self, request: Request, session: Session, producer: Producer) -> Response:
        job_id = request.path_params["job_id"]
        if not job_id or len(job_id) > _MAX_FIELD:
            raise _Refusal(400, "Bad job id", f"a job id is 1 to {_MAX_FIELD} characters")
        data = await queries.job_detail(self._sources(producer), job_id)
        status = 200 if data.found or data.problems else 404
        return self._render(request, session, "job.html", {"j": data, "section": "jobs"}, status=status)

    async def dead(self, request: Request, session: Session, producer: Producer) -> Response:
        params = request.query_params
        name = (params.get("name") or "").strip()[:200] or None
        page = _page_number(params.get("page"))
        data = await queries.jobs_page(self._sources(producer), state="dead", queue="", name=name, page=page)
        return self._render(request, session, "dead.html", {"p": data, "section": "dead"})

    async def schedules(self, request: Request, session: Session, producer: Producer) -> Response:
        rows, problems = await queries.schedules(self._sources(producer))
        context = {"rows": rows, "problems": problems, "section": "schedules"}
        return self._render(request, session, "schedules.html", context)

    async def workers(self, request: Request, session: Session, producer: Producer) -> Response:
        rows, malformed, problems = await queries.workers(self._sources(producer))
        context = {"rows": rows, "malformed": malformed, "problems": problems, "section": "workers"}
        return self._render(request, session, "workers.html", context)

    async def static_file(self, request: Request) -> Response:
        return self.static.response(request.path_params["name"])

    # -- login and logout ------------------------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        session, _ = self._session(request)
        target = _local(request.query_params.get("next"))
        if session is not None:
            return RedirectResponse(target, 303, headers=SECURITY_HEADERS)
        context = {
            "next": target,
            "error": None,
            "source": self.access.source,
            "session": None,
            "flash": None,
        }
        return self.renderer.page("login.html", context)

    async def login(self, request: Request) -> Response:
        client = request.client.host if request.client else "?"
        try:
            self._same_origin(request)
            form = await self._form(request)
        except _Refusal as refusal:
            return self._error(request, refusal)
        target = _local(form.get("next"))
        wait = self.throttle.retry_after(client)
        if wait is not None:
            throttled = _Refusal(
                429, "Too many attempts", f"too many failed logins from here; wait {wait:.0f} s"
            )
            response = self._error(request, throttled)
            response.headers["Retry-After"] = str(int(wait) + 1)
            return response
        found = self.access.login(form.get("token", ""))
        if found is None:
            self.throttle.failed(client)
            log.warning("dashboard login refused", client=client)
            error = f"that token is not one of the dashboard's ({self.access.source})"
            context = {
                "next": target,
                "error": error,
                "source": self.access.source,
                "session": None,
                "flash": None,
            }
            return self.renderer.page("login.html", context, status=401)
        operator, fingerprint = found
        log.info("dashboard login", who=operator.who, role=operator.role, client=client)
        response = RedirectResponse(target, 303, headers=SECURITY_HEADERS)
        self._set_session(request, response, self.access.issue(fingerprint))
        return response

    async def logout(self, request: Request) -> Response:
        session = self.access.session(request.cookies.get(SESSION_COOKIE))
        try:
            self._same_origin(request)
            form = await self._form(request)
            if session is not None and not self.access.csrf_ok(session, form.get("csrf")):
                raise _Refusal(403, "Refused", "the form is stale; reload the page and try again")
        except _Refusal as refusal:
            return self._error(request, refusal, session)
        if session is not None:
            log.info("dashboard logout", who=session.operator.who)
        response = RedirectResponse("/ui/login", 303, headers=SECURITY_HEADERS)
        response.delete_cookie(SESSION_COOKIE, path="/ui")
        return response

    # -- actions ----------------------------------------------------------------------------------------

    async def act(self, request: Request) -> Response:
        session = self.access.session(request.cookies.get(SESSION_COOKIE))
        try:
            if session is None:
                raise _Refusal(
                    401, "Not logged in", "log in again (the session ended), then repeat the action"
                )
            self._same_origin(request)
            form = await self._form(request)
            if not self.access.csrf_ok(session, form.get("csrf")):
                raise _Refusal(
                    403, "Refused", "the form is stale or came from elsewhere; reload the page and try again"
                )
            if not session.operator.may_act:
                raise _Refusal(
                    403, "Read-only", f"{session.operator.who} is a viewer: it may look but not act"
                )
            action = request.path_params["action"]
            describe, perform = self._action(action, form)
            back = _local(form.get("back"))
            if form.get("confirm") != "yes":
                context = {
                    "action": action,
                    "describe": describe,
                    "fields": form,
                    "back": back,
                    "section": None,
                }
                return self._render(request, session, "confirm.html", context)
            producer = self._producer(request)
            try:
                message = await perform(session, producer)
            except ActionRefused as exc:
                message = f"Not done: {exc}"
        except _Refusal as refusal:
            return self._error(request, refusal, session)
        response = RedirectResponse(back, 303, headers=SECURITY_HEADERS)
        sealed = self.access.seal(self.masker.text(message))
        response.set_cookie(FLASH_COOKIE, sealed, max_age=60, path="/ui", httponly=True, samesite="strict")
        return response

    def _action(
        self, action: str, form: dict[str, str]
    ) -> tuple[str, Callable[[Session, Producer], Awaitable[str]]]:
        """What the action will do (for the confirmation) and how to do it."""
        actions = self.actions
        if action == "retry":
            job_id = _field(form, "job_id", required=True) or ""
            return f"Enqueue job {job_id} again, with the same arguments, under a new job id.", (
                lambda s, p: actions.retry(s.operator, p, job_id)
            )
        if action == "purge":
            scope = _purge_scope(form)
            return f"Delete {scope.describe()} for good (they cannot be retried afterwards).", (
                lambda s, p: actions.purge(s.operator, p, scope)
            )
        if action == "cancel":
            job_id = _field(form, "job_id", required=True) or ""
            return f"Cancel job {job_id} before a worker starts it.", (
                lambda s, p: actions.cancel(s.operator, p, job_id)
            )
        if action == "run-schedule":
            job = _field(form, "job", required=True) or ""
            return f"Enqueue the scheduled job {job} now, outside its schedule.", (
                lambda s, p: actions.run_schedule(s.operator, p, job)
            )
        if action in ("pause", "resume"):
            queue = _field(form, "queue", required=True) or ""
            if action == "pause":
                return f"Pause queue {queue}: workers stop taking its jobs; new jobs wait.", (
                    lambda s, p: actions.pause(s.operator, p, queue)
                )
            return f"Resume queue {queue}: workers take its jobs again.", (
                lambda s, p: actions.resume(s.operator, p, queue)
            )
        raise _Refusal(
            404, "Unknown action", "the actions are retry, purge, cancel, run-schedule, pause and resume"
        )


def _purge_scope(form: dict[str, str]) -> PurgeScope:
    job_id = _field(form, "job_id")
    if job_id is not None:
        return PurgeScope(job_id=job_id)
    scope = _field(form, "scope")
    if scope == "all":
        return PurgeScope()
    name = _field(form, "job_name")
    days_text = _field(form, "older_than_days")
    days = None
    if days_text is not None:
        try:
            days = float(days_text)
        except ValueError:
            days = -1.0
        if not 0 <= days <= 36_500:
            raise _Refusal(
                400,
                "Bad filter",
                f"older than days: {days_text[:20]!r} is not a number of days from 0 to 36500",
            )
    if name is None and days is None:
        raise _Refusal(400, "Bad filter", "give a job name and/or an age in days, or choose all")
    return PurgeScope(job_name=name, older_than_days=days)


def _page_number(text: str | None) -> int:
    if not text:
        return 1
    if not text.isdigit() or not 1 <= int(text) <= 1_000_000:
        raise _Refusal(400, "Bad page", f"page: {text[:20]!r} is not a page number from 1")
    return int(text)


def _quote(value: str) -> str:
    return quote(value, safe="")


def _qs(**params: str | None) -> str:
    return urlencode({k: v for k, v in params.items() if v})


def _here(request: Request) -> str:
    """The request's path and query: where an action's result is shown."""
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")
