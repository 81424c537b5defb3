"""The FastAPI application: ``create_app()`` for tests and ``layerprune serve``, ``app`` for uvicorn.

Start-up applies migrations (the policy of ``db.migrate.ensure_schema``), creates the bootstrap
API keys from ``LAYERPRUNE_API_KEYS`` and starts the queue's sweeper thread (outbox dispatch,
lease reaper, idempotency-key purge: ``layerprune.queue.sweeper``, the same loop every worker
runs). When the database is down at start-up, or behind with ``LAYERPRUNE_AUTO_MIGRATE=0``, the
app still starts, not ready: requests answer 503 and the sweeper finishes the start-up work once
the database is back (or migrated).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from layerprune.api.body_limit import BodyLimitMiddleware
from layerprune.api.body_timeout import BodyTimeoutMiddleware
from layerprune.api.deps import install_sessions, limit_threads
from layerprune.api.errors import install_error_handlers
from layerprune.api.job_poll import JobPollMiddleware
from layerprune.api.openapi import install_openapi
from layerprune.api.routes import (
    artifacts,
    dashboard,
    events,
    files,
    health,
    jobs,
    metrics,
    retention,
    studies,
)
from layerprune.db.keys import bootstrap_keys, key_secret
from layerprune.db.migrate import SchemaBehindError, ensure_schema
from layerprune.db.session import session_scope
from layerprune.logs import bind, configure_logging
from layerprune.queue.sweeper import Sweeper
from layerprune.settings import Settings, get_settings
from layerprune.webhooks import WebhookSender

log = logging.getLogger("layerprune.api")

DESCRIPTION = """Prune decoder layers of Hugging Face LLMs as jobs (Lu et al. 2024, *Reassessing Layer
Pruning in LLMs*): score layers, remove them, heal by fine-tuning, evaluate, download the result.

Auth: `Authorization: Bearer <api-key>`. Every 4xx/5xx body is
`{"error": {"code", "message", "param"}}`; lists are `{"object": "list", "data", "has_more", "last_id"}`,
newest first, with `limit` (1..100) and `after=<id>`. POSTs that create take an `Idempotency-Key`."""


def _startup_work(settings: Settings) -> bool:
    """Migrations (db.migrate.ensure_schema's policy) and bootstrap keys; True once done (False: the
    database is not reachable yet, or LAYERPRUNE_AUTO_MIGRATE=0 and nobody has migrated it yet)."""
    url = settings.effective_database_url
    try:
        ensure_schema(settings)
        pairs = settings.bootstrap_keys
        if pairs:
            with session_scope(url) as session:
                bootstrap_keys(session, pairs)
        return True
    except SchemaBehindError as exc:  # not ready (/readyz says so) until `layerprune migrate` has run
        log.error("%s; not ready until then", exc)
        return False
    except Exception as exc:  # noqa: BLE001 - retried by the sweeper thread
        log.warning("start-up work failed (database unavailable?): %s", type(exc).__name__)
        return False


def create_app(settings: Settings | None = None, *, start_background: bool = True) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_json)
    key_secret(settings)  # refuse to start without a usable API-key secret (db/keys.py)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        limit_threads(settings)
        done = _startup_work(settings)
        app.state.job_cache.feed.start(app.state.job_cache)  # the job cache's change listener, if any
        keeper = None
        if start_background:
            keeper = Sweeper(app.state.session_factory, settings, name="layerprune-api-sweeper",
                             startup=None if done else (lambda: _startup_work(settings)))
            keeper.start()
        app.state.sweeper = keeper
        # Webhook deliveries (e.g. of a queued job cancelled here) are sent by their own thread.
        sender = WebhookSender(app.state.session_factory, settings=settings).start() if start_background else None
        try:
            yield
        finally:
            await app.state.job_cache.feed.stop()
            if keeper is not None:
                keeper.stop()
            if sender is not None:
                sender.stop()

    app = FastAPI(
        title="layerprune",
        version="1.0.0",
        summary="LLM layer pruning as a service",
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=[
            {"name": "jobs", "description": "Pruning / healing / evaluation jobs"},
            {"name": "events", "description": "What a job did, as JSON or server-sent events"},
            {"name": "artifacts", "description": "A job's output model"},
            {"name": "files", "description": "Uploaded data sets"},
            {"name": "operations", "description": "Health, readiness, metrics"},
        ],
    )
    app.state.settings = settings
    app.state.database_url = settings.effective_database_url
    install_sessions(app, settings)  # session factories, API key cache, write slots
    install_error_handlers(app)
    install_openapi(app)
    for router in (jobs.router, events.router, artifacts.router, files.router, health.router,
                   retention.router, dashboard.router, studies.router):
        app.include_router(router)
    app.add_middleware(JobPollMiddleware, api=app)  # innermost: the log, metrics and limits see its answers
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_spec_bytes)
    app.add_middleware(BodyTimeoutMiddleware, seconds=settings.request_body_timeout_seconds)
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["*"],
                           allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Range",
                                          "If-None-Match", "If-Range", "Last-Event-ID"],
                           expose_headers=["ETag", "Content-Range", "X-Request-ID"])

    app.add_middleware(RequestLogMiddleware)

    metrics.install(app, token=settings.metrics_token)
    return app


class RequestLogMiddleware:
    """One log line per request (method, path, tenant, status, duration) and an ``X-Request-ID``.

    Plain ASGI rather than ``@app.middleware("http")``: that runs every request through an extra
    task and a memory stream, which cost about a fifth of the API's throughput under polling load.
    The line is written when the response is complete (a stream's line when the stream ends).
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = value.decode("latin-1")
                break
        request_id = request_id or uuid.uuid4().hex[:16]
        started = time.monotonic()
        status = 500  # what the client gets if the app raises before answering

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()),
                                                  (b"x-request-id", request_id.encode("latin-1"))]}
            await send(message)

        with bind(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                # Never the headers (they carry the API key), nor a signed link's token. The tenant
                # goes through the log context: get_tenant may have bound it there already.
                with bind(tenant=scope.get("state", {}).get("tenant")):
                    log.info("request", extra={"method": scope["method"], "path": loggable_path(scope["path"]),
                                               "status": status,
                                               "duration_ms": round((time.monotonic() - started) * 1000, 1)})


_SECRET_PATH_PREFIXES = ("/dashboard/download/",)  # the rest of such a path is a bearer token


def loggable_path(path: str) -> str:
    """``path`` with a signed download token cut out: whoever reads the logs must not be able to download."""
    for prefix in _SECRET_PATH_PREFIXES:
        if path.startswith(prefix):
            return prefix + "<token>"
    return path


def __getattr__(name: str) -> Any:
    # ``uvicorn layerprune.api.app:app``: built on first access, so importing this module for
    # create_app() does not read the environment or touch a database.
    if name == "app":
        global app
        app = create_app()
        return app
    raise AttributeError(name)
