"""Jobs as the API sees them: create, get, list (newest first, cursor-stable), request cancel.

The worker's transitions (claim, heartbeat, finish, fail, reap) live in ``layerprune.db.queue``.
Every UPDATE names the status it expects, so a terminal job never changes again even when the
API and a worker race.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, exists, func, select, update
from sqlalchemy.orm import Session

from layerprune.db import ids
from layerprune.db.events import add_event
from layerprune.db.models import TERMINAL_STATUSES, Job, utcnow


class JobStateConflict(Exception):  # noqa: N818 - reads as what happened
    """The job is in a state that does not allow the request (cancel of a finished job)."""

    def __init__(self, job: Job) -> None:
        super().__init__(f"job {job.id} is {job.status}")
        self.job = job


def create_job(session: Session, tenant: str, spec: dict[str, Any], *, queue: str, max_attempts: int) -> Job:
    """Insert a queued job and its ``created`` event (not yet dispatched: ``dispatched_at`` NULL)."""
    job = Job(
        tenant=tenant,
        status="queued",
        progress=0.0,
        spec=spec,
        metadata_=dict(spec.get("metadata") or {}),
        priority=int(spec.get("priority") or 0),
        queue=queue,
        attempts=0,
        max_attempts=max_attempts,
        dispatch_count=0,
    )
    session.add(job)
    session.flush()
    add_event(session, job.id, "created", "job accepted", data={"queue": queue})
    return job


def get_job(session: Session, tenant: str, job_id: str) -> Job | None:
    """The job if it belongs to ``tenant`` (another tenant's job is indistinguishable from none).

    An id that cannot be one (``db.ids``) is none, without a query.
    """
    if not ids.could_be_id(job_id, ids.JOB):
        return None
    return session.scalar(select(Job).where(Job.id == job_id, Job.tenant == tenant))


def job_seq(session: Session, tenant: str, job_id: str) -> int | None:
    if not ids.could_be_id(job_id, ids.JOB):
        return None
    return session.scalar(select(Job.seq).where(Job.id == job_id, Job.tenant == tenant))


@dataclass(frozen=True)
class Page:
    items: list[Any]
    has_more: bool


def list_jobs(
    session: Session,
    tenant: str,
    *,
    limit: int = 20,
    after_seq: int | None = None,
    status: str | None = None,
    metadata: dict[str, str] | None = None,
) -> Page:
    """Newest first by ``seq``; ``after_seq`` continues below a cursor, so rows inserted meanwhile
    (higher seq) never shift or repeat later pages."""
    stmt = select(Job).where(Job.tenant == tenant)
    if status is not None:
        stmt = stmt.where(Job.status == status)
    for key, value in (metadata or {}).items():
        stmt = stmt.where(metadata_matches(session, key, value))
    if after_seq is not None:
        stmt = stmt.where(Job.seq < after_seq)
    rows = list(session.scalars(stmt.order_by(Job.seq.desc()).limit(limit + 1)))
    return Page(rows[:limit], len(rows) > limit)


def metadata_matches(session: Session, key: str, value: str) -> ColumnElement[bool]:
    """``metadata[key] == value`` for any key, the same on both backends.

    SQLite's JSON path syntax cannot quote every key (a ``"`` in it silently matches nothing),
    so there the key is compared as a value of ``json_each``; Postgres takes it as a parameter.
    """
    if session.get_bind().dialect.name == "sqlite":
        pairs = func.json_each(Job.metadata_).table_valued("key", "value", "type").alias("md")
        return exists().where(pairs.c.key == key, pairs.c.type == "text", pairs.c.value == value)
    return Job.metadata_[key].as_string() == value


def mark_dispatched_now(session: Session, job_id: str) -> bool:
    """After a successful send: record it (only while the job is still queued and unsent)."""
    now = utcnow()
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued", Job.dispatched_at.is_(None))
        .values(dispatched_at=now, dispatch_count=Job.dispatch_count + 1, updated_at=now)
    )
    if res.rowcount:
        add_event(session, job_id, "dispatched", "sent to the job queue")
    return bool(res.rowcount)


def request_cancel(session: Session, job: Job) -> Job:
    """queued → cancelled at once; running → cancelling (the worker finishes it); cancelling stays;
    a terminal job raises :class:`JobStateConflict`. The caller commits."""
    for _ in range(3):  # the status may change under us (a worker claims it): re-read and retry
        session.refresh(job)
        now = utcnow()
        if job.status in TERMINAL_STATUSES:
            raise JobStateConflict(job)
        if job.status == "cancelling":
            return job
        if job.status == "queued":
            res = session.execute(
                update(Job).where(Job.id == job.id, Job.status == "queued")
                .values(status="cancelled", cancel_requested_at=now, finished_at=now, updated_at=now,
                        stage=None)
            )
            if res.rowcount:
                add_event(session, job.id, "cancel_requested", "cancel requested while queued")
                add_event(session, job.id, "state", "job cancelled", data={"status": "cancelled"})
                session.refresh(job)
                return job
        elif job.status == "running":
            res = session.execute(
                update(Job).where(Job.id == job.id, Job.status == "running")
                .values(status="cancelling", cancel_requested_at=now, updated_at=now)
            )
            if res.rowcount:
                add_event(session, job.id, "cancel_requested", "cancel requested; the worker stops at its next check")
                session.refresh(job)
                return job
    session.refresh(job)
    if job.status in TERMINAL_STATUSES:
        raise JobStateConflict(job)
    return job
