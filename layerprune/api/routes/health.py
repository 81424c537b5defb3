"""``/healthz`` (the process answers) and ``/readyz`` (database, migrations, broker)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from layerprune.api.schemas import error_responses
from layerprune.db.migrate import current_revision, head_revision
from layerprune.queue.celery_app import broker_ok

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _checks(request: Request) -> dict[str, Any]:
    checks: dict[str, Any] = {}
    url = request.app.state.database_url
    try:
        with request.app.state.session_factory() as session:
            session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means "down"
        checks["database"] = f"down: {type(exc).__name__}"
    if checks["database"] == "ok":
        try:
            current, head = current_revision(url), head_revision()
            checks["migrations"] = "ok" if current == head else f"behind: at {current}, head is {head}"
        except Exception as exc:  # noqa: BLE001
            checks["migrations"] = f"unknown: {type(exc).__name__}"
    else:
        checks["migrations"] = "unknown: database down"
    try:
        checks["broker"] = "ok" if broker_ok() else "down"
    except Exception as exc:  # noqa: BLE001
        checks["broker"] = f"down: {type(exc).__name__}"
    return checks


@router.get("/readyz", summary="Readiness: database and broker reachable, migrations at head",
            responses={200: {"content": {"application/json": {"example": {
                "status": "ok", "checks": {"database": "ok", "migrations": "ok", "broker": "ok"}}}}},
                       **error_responses(503)})
async def readyz(request: Request) -> JSONResponse:
    checks = await run_in_threadpool(_checks, request)
    down = [name for name, state in checks.items() if state != "ok"]
    if not down:
        return JSONResponse({"status": "ok", "checks": checks})
    message = "not ready: " + "; ".join(f"{name} {checks[name]}" for name in down)
    return JSONResponse({"error": {"code": "not_ready", "message": message, "param": None}, "checks": checks},
                        status_code=503)
