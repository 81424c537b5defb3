"""``/v1/jobs/{id}/events``: the job's history as JSON, or live as server-sent events."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from layerprune.api.deps import SessionDep, TenantDep
from layerprune.api.errors import is_database_down, not_found
from layerprune.api.pagination import AfterQuery, bad_cursor, envelope
from layerprune.api.schemas import EventPublic, EventsPublic, error_responses
from layerprune.db.events import event_seq, list_events
from layerprune.db.jobs import get_job
from layerprune.db.models import Job
from layerprune.queue.status import TERMINAL_STATUSES

router = APIRouter(prefix="/v1/jobs", tags=["events"])

POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0
RETRY_SECONDS = 2.0


@router.get(
    "/{job_id}/events",
    response_model=EventsPublic,
    summary="A job's events, oldest first",
    description="Ordered events (`created`, `dispatched`, `stage`, `progress` with step/loss/throughput, "
                "`warning`, `state`…). `after=<evt id>` continues after an event. With "
                "`Accept: text/event-stream` the same events stream as server-sent events (`id:` = event id, "
                "`event:` = type, `data:` = the event object) until the job ends; `Last-Event-ID` resumes.",
    responses={200: {"content": {"text/event-stream": {"example": 'id: evt_…\nevent: progress\ndata: {"id": "evt_…", …}\n\n'}}},
               **error_responses(401, 404, 422, 503)},
)
def list_events_route(
    job_id: str,
    request: Request,
    session: SessionDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="page size (1..1000)")] = 100,
    after: AfterQuery = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", include_in_schema=False)] = None,
) -> Any:
    job = get_job(session, tenant, job_id)
    if job is None:
        raise not_found("job")
    cursor = after or last_event_id
    after_seq = None
    if cursor:
        after_seq = event_seq(session, job_id, cursor)
        if after_seq is None:
            raise bad_cursor(cursor)
    if "text/event-stream" in request.headers.get("accept", ""):
        session.close()  # the stream opens short sessions of its own
        factory = request.app.state.read_session_factory  # short reads: never the SQLite write lock
        return StreamingResponse(_stream(request, factory, job_id, after_seq), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    rows = list_events(session, job_id, after_seq=after_seq, limit=limit + 1)
    items = [EventPublic.from_row(e) for e in rows[:limit]]
    return envelope(items, len(rows) > limit)


def _poll(factory: Any, job_id: str, after_seq: int | None) -> tuple[list[EventPublic], list[int], str]:
    with factory() as session:
        # Status first: once it reads terminal, the final event (same transaction) is visible too.
        status = session.get(Job, job_id).status
        rows = list_events(session, job_id, after_seq=after_seq, limit=500)
        return [EventPublic.from_row(e) for e in rows], [e.seq for e in rows], status


async def _stream(request: Request, factory: Any, job_id: str, after_seq: int | None) -> AsyncIterator[str]:
    last_sent = time.monotonic()
    yield "retry: 2000\n\n"
    while True:
        try:
            events, seqs, status = await run_in_threadpool(_poll, factory, job_id, after_seq)
        except Exception as exc:  # noqa: BLE001 - the database is away: keep the stream, retry
            if not is_database_down(exc):
                raise
            if await request.is_disconnected():
                return
            yield ": database unavailable; retrying\n\n"
            last_sent = time.monotonic()
            await asyncio.sleep(RETRY_SECONDS)
            continue
        for evt, seq in zip(events, seqs, strict=True):
            payload = json.dumps(evt.model_dump(mode="json"))
            yield f"id: {evt.id}\nevent: {evt.type}\ndata: {payload}\n\n"
            after_seq = seq
            last_sent = time.monotonic()
        if status in TERMINAL_STATUSES and len(events) < 500:
            yield "event: end\ndata: " + json.dumps({"status": status}) + "\n\n"
            return
        if await request.is_disconnected():
            return
        if time.monotonic() - last_sent > KEEPALIVE_SECONDS:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
        await asyncio.sleep(POLL_SECONDS)
