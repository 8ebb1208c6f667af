"""The ASGI application of `python -m worker serve`: the `/v1` API, `/openapi.json`, `/healthz`
and `/readyz`, around one `Producer` opened by the app's lifespan and closed when it stops.

Built on Starlette: a small, well-kept ASGI toolkit whose plain routes cost little per request
(the service aims at thousands of enqueues a second on two cores). FastAPI was not chosen: its
value is request models and OpenAPI inferred from static annotations, but our per-job argument
models are built at run time from the job registry, so validation is the registry's own and the
OpenAPI document is generated from it (`openapi`). Later pages (the ops dashboard) are added to
the same app with `extra_routes`.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import orjson
import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from core.registry import Registry
from jobs import registry_for
from settings import Settings
from worker.ops.http.api import ApiState, api_routes, endpoint
from worker.ops.http.auth import TokenAuth
from worker.ops.http.openapi import openapi_document
from worker.ops.http.responses import ApiError, json_response
from worker.ops.schema import job_schemas
from worker.producer import Producer

__all__ = ["create_app"]

log = structlog.get_logger(__name__)


def _version() -> str:
    try:
        return importlib.metadata.version("maxbooster-jobs")
    except importlib.metadata.PackageNotFoundError:
        return "0"


@endpoint
async def healthz(request: Request) -> Response:
    """The process is alive and its event loop answers."""
    return json_response({"status": "ok"})


@endpoint
async def readyz(request: Request) -> Response:
    """Ready while the producer is open. Redis being down does not make the service unready:
    jobs then follow their fallback (inline, spool), which is what the service is for."""
    producer: Producer | None = request.app.state.api.producer
    if producer is None:
        return json_response({"status": "not ready"}, 503)
    return json_response({"status": "ready", "redis": producer.backend.state.value})


async def _not_found(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    if status == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
        return ApiError(405, "method_not_allowed", message).response()
    return ApiError(status, "not_found", f"no route {request.url.path}; see /openapi.json").response()


def create_app(
    settings: Settings, *, registry: Registry | None = None, extra_routes: Sequence[BaseRoute] = ()
) -> Starlette:
    """The service. Raises ValueError when API_TOKENS limits a token to a job that is not registered.
    Its jobs: `registry`, or ours with the modules in JOB_MODULES."""
    registry = registry if registry is not None else registry_for(settings)
    api = ApiState(settings, registry, TokenAuth(settings, registry))
    api.schema_json = orjson.dumps(job_schemas(registry))
    api.openapi_json = orjson.dumps(openapi_document(registry, version=_version()))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with Producer(settings, registry=registry) as producer:
            api.producer = producer
            log.info(
                "API ready",
                host=settings.api_host,
                auth=f"{api.auth.count} bearer tokens" if api.auth.enabled else "off (API_DEV_NO_AUTH)",
                jobs=len(registry),
            )
            try:
                yield
            finally:
                api.producer = None  # /readyz says so while inline jobs finish and the producer closes

    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            *api_routes(),
            *extra_routes,
        ],
        lifespan=lifespan,
        exception_handlers={404: _not_found, 405: _not_found},
    )
    app.state.api = api
    return app
