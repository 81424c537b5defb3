"""The outbox: queued jobs the broker has not (or may have lost), sent by the sweeper.

A job is committed first and sent afterwards. When the broker is down at POST time the job keeps
``dispatched_at = NULL`` and :func:`dispatch_pending` (run every few seconds by the sweeper of
the API and of every worker) sends it once the broker is back. A message lost by the broker itself
(Redis restarted without persistence) is covered by re-sending jobs that stay ``queued`` long
after their last send, with exponential back-off on ``dispatch_count`` so that a long backlog does
not fill the queue with copies. (Webhook deliveries are the other outbox: their rows are written
by the terminal transitions and sent by ``layerprune.webhooks``.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from layerprune.db.models import Job
from layerprune.queue.celery_app import send_job
from layerprune.queue.status import JobStatus
from layerprune.queue.transitions import mark_dispatched
from layerprune.settings import get_settings

log = logging.getLogger(__name__)

REDISPATCH_CAP_S = 6 * 3600.0


def redispatch_due(dispatched_at: datetime | None, dispatch_count: int, now: datetime, base_s: float) -> bool:
    """Re-send a still-queued job after ``base_s × 2^(dispatch_count-1)`` seconds, capped at 6 h."""
    if dispatched_at is None:
        return True
    if dispatched_at.tzinfo is None:
        dispatched_at = dispatched_at.replace(tzinfo=UTC)
    wait = min(base_s * (2 ** max(dispatch_count - 1, 0)), REDISPATCH_CAP_S)
    return now - dispatched_at >= timedelta(seconds=wait)


def pending_dispatch(session: Session, limit: int = 100, *,
                     redispatch_after_s: float | None = None) -> list[tuple[str, str, int]]:
    """(job id, queue, priority) of queued jobs to send: never sent, or sent long ago and still waiting.

    Highest priority first, then oldest. The re-send wait doubles with each send (see
    :func:`redispatch_due`), so a message a broker lost is replaced without flooding a long queue.
    """
    now = datetime.now(UTC)
    cond = Job.dispatched_at.is_(None)
    if redispatch_after_s is not None:
        cond = or_(cond, Job.dispatched_at < now - timedelta(seconds=redispatch_after_s))
    rows = session.execute(
        select(Job.id, Job.queue, Job.priority, Job.dispatched_at, Job.dispatch_count)
        .where(Job.status == JobStatus.QUEUED, cond)
        .order_by(Job.priority.desc(), Job.seq)
        .limit(limit)
    ).all()
    out = []
    for r in rows:
        if r.dispatched_at is None or (
            redispatch_after_s is not None
            and redispatch_due(r.dispatched_at, r.dispatch_count, now, redispatch_after_s)
        ):
            out.append((r.id, r.queue, int(r.priority or 0)))
    return out


def send_now(session: Session, job_id: str, queue: str, priority: int) -> bool:
    """Send a just-committed job to the broker; on failure leave it in the outbox for the sweeper.

    Never raises: a create route answers 201 whether or not the broker is up, because the job is
    already safe in the database. Returns whether the job was sent.
    """
    try:
        send_job(job_id, queue, priority)
    except Exception as exc:  # noqa: BLE001 - broker down: the housekeeping sweep sends it later
        log.warning("broker unavailable; job %s left for the outbox sweep: %s", job_id, type(exc).__name__)
        return False
    try:
        mark_dispatched(session, job_id, only_if_unsent=True)
    except Exception:  # noqa: BLE001 - harmless: the sweep sends it again, the claim is atomic
        session.rollback()
        log.warning("could not record the dispatch of %s", job_id, exc_info=True)
    return True


def dispatch_pending(
    session_factory: Callable[[], AbstractContextManager[Any]] | Callable[[], Any],
    *,
    limit: int = 100,
    redispatch_after_s: float | None = None,
) -> int:
    """Send every queued job not yet sent (and re-send long-waiting ones); returns how many were sent.

    Safe in several processes at once: a job sent twice is claimed once. Each job is sent first and
    marked afterwards, so a crash in between only causes a harmless second send. Stops at the
    first broker error (the broker is down: the next sweep retries).
    """
    if redispatch_after_s is None:
        redispatch_after_s = get_settings().redispatch_after_seconds
    sent = 0
    with _session(session_factory) as session:
        candidates = pending_dispatch(session, limit, redispatch_after_s=redispatch_after_s)
    for job_id, queue, priority in candidates:
        try:
            send_job(job_id, queue, priority)
        except Exception as exc:  # noqa: BLE001 - broker down: leave it for the next sweep
            log.warning("dispatch of %s failed: %s", job_id, exc)
            break
        with _session(session_factory) as session:
            mark_dispatched(session, job_id)
        sent += 1
    return sent


class _session:  # noqa: N801 - used like a function
    """Accept either a sessionmaker (call → Session) or a context-manager factory (session_scope)."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._cm: Any = None
        self._session: Any = None

    def __enter__(self) -> Any:
        made = self._factory()
        if hasattr(made, "execute"):
            self._session = made
            return made
        self._cm = made
        self._session = made.__enter__()
        return self._session

    def __exit__(self, *exc: Any) -> None:
        if self._cm is not None:
            self._cm.__exit__(*exc)
        else:
            self._session.close()
