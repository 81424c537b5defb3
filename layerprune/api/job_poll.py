"""``GET /v1/jobs/{id}`` answered from the job cache before routing: the polling hot path (issue 11).

A poller's request that the app would answer from memory anyway (its key verified a moment ago,
the job's JSON in :class:`~layerprune.api.job_cache.JobCache`) costs the event loop far more in
routing and dependency resolution than in the answer itself: at 200 pollers that machinery was
most of the API's CPU time. This middleware sits inside the request log, metrics and body limits,
so those see the request as before, and answers exactly such a request with the very response
the route would send (same bytes, same headers; ``scope["route"]`` set for the metrics label).

Anything else goes on to the app untouched: another path or method, no or an unknown key, a job
not in the cache, a cache whose change feed is not ready, and any request while some client has
failed key checks on record (the route then applies the failed-key limit itself). So every
error, and every answer that needs the database, comes from the route.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from layerprune.api import auth_limit
from layerprune.api.deps import cached_tenant
from layerprune.api.job_cache import GENERATION_SCOPE_KEY

PREFIX = "/v1/jobs/"


def _bearer_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, key = value.decode("latin-1").partition(" ")
            key = key.strip()
            return key if scheme.lower() == "bearer" and key else None
    return None


class JobPollMiddleware:
    def __init__(self, app: Any, api: Any) -> None:
        self.app = app
        self.api = api  # the FastAPI app: its state (caches) and its routes
        self._route: Any = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"].startswith(PREFIX):
            body, tenant = await self._cached(scope)
            if body is not None:
                scope.setdefault("state", {})["tenant"] = tenant  # for the request log line
                scope["route"] = self._route
                await Response(body, media_type="application/json")(scope, receive, send)
                return
            await self.app(scope, receive, send)
            if self._route is None:
                self._route = _job_route(scope.get("route"))
            return
        await self.app(scope, receive, send)

    async def _cached(self, scope: dict[str, Any]) -> tuple[bytes | None, str | None]:
        job_id = scope["path"][len(PREFIX):]
        if not job_id or "/" in job_id or self._route is None:
            return None, None
        key = _bearer_key(scope["headers"])
        tenant = cached_tenant(self.api, key) if key else None
        if tenant is None or auth_limit.any_failures(self.api):
            return None, None
        body, generation = await self.api.state.job_cache.lookup(tenant, job_id)
        if body is None:
            # The route reads the job and stores it under this generation, without waiting for
            # the change feed a second time.
            scope[GENERATION_SCOPE_KEY] = (tenant, job_id, generation)
            return None, None
        return body, tenant


def _job_route(route: Any) -> Any:
    """The route the router matched, if it is ``GET /v1/jobs/{id}`` (set as ``scope["route"]`` on hits,
    as routing would: the metrics label it). Every job's first GET goes through it, so it is known
    before any hit."""
    endpoint = getattr(route, "endpoint", None)
    named = (getattr(endpoint, "__module__", None), getattr(endpoint, "__name__", None))
    return route if named == ("layerprune.api.routes.jobs", "get_job_route") else None
