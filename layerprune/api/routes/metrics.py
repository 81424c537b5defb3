"""``GET /metrics``: the service's Prometheus metrics (``layerprune.metrics``) over HTTP."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from layerprune.api.errors import error_response
from layerprune.metrics import MetricsMiddleware, registry_for, render


def install(app: Any, token: str | None = None) -> None:
    """Add the HTTP middleware, the DB collector and ``GET /metrics`` to a FastAPI app.

    ``token``: when set, a scrape must send ``Authorization: Bearer <token>`` (the metrics show
    job counts and worker ids of every tenant); unset, the endpoint is open, for deployments that
    reach it only from inside their network.
    """
    app.add_middleware(MetricsMiddleware)
    app.state.metrics_registry = registry = registry_for(lambda: getattr(app.state, "session_factory", None))
    router = APIRouter(tags=["operations"])

    def get_metrics(request: Request) -> Response:
        if token:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
                return error_response(401, "unauthorized",
                                      "/metrics needs 'Authorization: Bearer <LAYERPRUNE_METRICS_TOKEN>'",
                                      headers={"WWW-Authenticate": "Bearer"})
        return Response(render(registry), media_type=CONTENT_TYPE_LATEST)

    router.add_api_route("/metrics", get_metrics, methods=["GET"], summary="Prometheus metrics",
                         response_class=Response,
                         responses={200: {"content": {CONTENT_TYPE_LATEST: {}},
                                          "description": "Prometheus text exposition format"},
                                    401: {"description": "LAYERPRUNE_METRICS_TOKEN is set and was not sent"}})
    app.include_router(router)
