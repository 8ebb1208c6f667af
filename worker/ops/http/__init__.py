"""The HTTP service of `python -m worker serve`: `app` (the app factory and its lifespan),
`api` (the `/v1` routes), `auth` (bearer tokens), `openapi` (the document generated from the job
registry), `responses` (JSON and the error shape) and `server` (uvicorn)."""

from worker.ops.http.app import create_app
from worker.ops.http.server import build_server, serve, startup_problem

__all__ = ["build_server", "create_app", "serve", "startup_problem"]
