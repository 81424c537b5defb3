"""Every change of a job's status, each a guarded UPDATE with its event in the same transaction.

The database is the queue's truth; broker messages only say "look at job X". Each function moves
a job from the statuses it expects (checked against ``queue.status.TRANSITIONS`` at import time)
to the next and writes the matching ``job_events`` row in the same transaction. Each UPDATE names
the status (and, for a held job, the worker) it expects, so a transition that lost a race changes
nothing and reports it, and a terminal state never changes again. Every move into a terminal
status also adds the job's webhook delivery row (when it has a webhook) in that transaction, so
the delivery exists exactly when the terminal state does, whoever made the move.

The API's two (``create_job``, ``request_cancel``) leave the commit to their caller, which commits
them with its own rows (the idempotency key); all others commit (or roll back) themselves:

- ``create_job``       (new) → queued, with its ``created`` event
- ``mark_dispatched``  records a send to the broker (the outbox entry is done); stays queued
- ``request_cancel``   queued → cancelled; running → cancelling; cancelling stays
- ``claim_job``        queued (or running with an expired lease) → running; attempts + 1, lease
- ``heartbeat``        extends the lease of the claiming worker; False once cancelling/taken away
- ``set_stage`` / ``set_progress`` / ``add_job_event``: a running job's progress (no status change)
- ``finish_job``       running → succeeded, with the artifact rows (published files) atomically
- ``fail_job``         running → failed {code, message}
- ``cancel_finish``    cancelling/running → cancelled (the worker stopped)
- ``reap_expired``     running with an expired lease → queued again (attempt < max) or failed
                       ``worker_lost``; cancelling with an expired lease → cancelled
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from layerprune.db.events import add_event
from layerprune.db.models import Artifact, Job, WebhookDelivery
from layerprune.queue.status import HELD_STATUSES, TERMINAL_STATUSES, JobStatus, sources

S = JobStatus
# The statuses each guarded UPDATE expects, checked against the transition table.
_CLAIMABLE = sources(S.RUNNING, (S.QUEUED, S.RUNNING))  # running: only with an expired lease
_CANCEL_NOW = sources(S.CANCELLED, (S.QUEUED,))
_CANCEL_ASK = sources(S.CANCELLING, (S.RUNNING,))
_FINISHABLE = sources(S.SUCCEEDED, (S.RUNNING,))
_FAILABLE = sources(S.FAILED, (S.RUNNING,))
_STOPPABLE = sources(S.CANCELLED, (S.RUNNING, S.CANCELLING))
_REQUEUEABLE = sources(S.QUEUED, (S.RUNNING,))
_REAP_CANCEL = sources(S.CANCELLED, (S.CANCELLING,))


class JobStateConflict(Exception):  # noqa: N818 - reads as what happened
    """The job is in a state that does not allow the request (cancel of a finished job)."""

    def __init__(self, job: Job) -> None:
        super().__init__(f"job {job.id} is {job.status}")
        self.job = job


def _now() -> datetime:
    return datetime.now(UTC)


def _event(session: Session, job_id: str, type_: str, message: str, *, level: str = "info",
           data: dict[str, Any] | None = None) -> None:
    add_event(session, job_id, type_, message, level=level, data=data or {})


def enqueue_delivery(session: Session, job_id: str, status: str) -> WebhookDelivery | None:
    """Add the webhook delivery row for ``job_id`` reaching terminal ``status`` (no commit).

    Returns the row, or None when the job has no webhook or ``status`` is not terminal. Does no
    network I/O (``layerprune.webhooks`` sends it later), so it never slows a transition down.
    """
    if status not in TERMINAL_STATUSES:
        return None
    spec = session.scalar(select(Job.spec).where(Job.id == job_id))
    hook = spec.get("webhook") if isinstance(spec, dict) else None
    if not isinstance(hook, dict) or not hook.get("url"):
        return None
    now = _now()
    row = WebhookDelivery(job_id=job_id, url=hook["url"], event_type=f"job.{status}", status="pending",
                          attempts=0, next_attempt_at=now, created_at=now)
    session.add(row)
    return row


def _terminal(session: Session, job_id: str, status: str, message: str, *, level: str = "info",
              data: dict[str, Any] | None = None) -> None:
    """What every terminal transition writes with it: the state event and the webhook delivery row."""
    status = str(status)
    _event(session, job_id, "state", message, level=level, data={"status": status, **(data or {})})
    enqueue_delivery(session, job_id, status)


# ---------------------------------------------------------------- the API's transitions


def create_job(session: Session, tenant: str, spec: dict[str, Any], *, queue: str, max_attempts: int) -> Job:
    """Insert a queued job and its ``created`` event (not yet dispatched: ``dispatched_at`` NULL)."""
    job = Job(
        tenant=tenant,
        status=S.QUEUED.value,
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


def mark_dispatched(session: Session, job_id: str, *, only_if_unsent: bool = False) -> bool:
    """Record a send to the broker (commits); a no-op once the job left ``queued``.

    ``only_if_unsent``: the API's send right after creating the job, which must not count again a
    send the outbox recorded meanwhile.
    """
    now = _now()
    stmt = update(Job).where(Job.id == job_id, Job.status == S.QUEUED)
    if only_if_unsent:
        stmt = stmt.where(Job.dispatched_at.is_(None))
    row = session.execute(
        stmt.values(dispatched_at=now, dispatch_count=Job.dispatch_count + 1, updated_at=now)
        .returning(Job.queue, Job.dispatch_count)
        .execution_options(synchronize_session=False)
    ).first()
    if row is None:
        session.rollback()
        return False
    _event(session, job_id, "dispatched", f"sent to queue {row.queue}",
           data={"queue": row.queue, "dispatch_count": row.dispatch_count})
    session.commit()
    return True


def request_cancel(session: Session, job: Job) -> Job:
    """queued → cancelled at once; running → cancelling (the worker finishes it); cancelling stays;
    a terminal job raises :class:`JobStateConflict`. The caller commits."""
    for _ in range(3):  # the status may change under us (a worker claims it): re-read and retry
        session.refresh(job)
        now = _now()
        if job.status in TERMINAL_STATUSES:
            raise JobStateConflict(job)
        if job.status == S.CANCELLING:
            return job
        if job.status in _CANCEL_NOW:
            res = session.execute(
                update(Job).where(Job.id == job.id, Job.status == job.status)
                .values(status=S.CANCELLED.value, cancel_requested_at=now, finished_at=now, updated_at=now,
                        stage=None)
            )
            if res.rowcount:
                _event(session, job.id, "cancel_requested", "cancel requested while queued")
                _terminal(session, job.id, S.CANCELLED, "job cancelled")
                session.refresh(job)
                return job
        elif job.status in _CANCEL_ASK:
            res = session.execute(
                update(Job).where(Job.id == job.id, Job.status == job.status)
                .values(status=S.CANCELLING.value, cancel_requested_at=now, updated_at=now)
            )
            if res.rowcount:
                _event(session, job.id, "cancel_requested", "cancel requested; the worker stops at its next check")
                session.refresh(job)
                return job
    session.refresh(job)
    if job.status in TERMINAL_STATUSES:
        raise JobStateConflict(job)
    return job


# ---------------------------------------------------------------- the worker's transitions


def claim_job(session: Session, job_id: str, worker_id: str, lease_s: float) -> Job | None:
    """Take ``job_id`` for ``worker_id``; None when someone else has it (or it is not runnable).

    One UPDATE … RETURNING: of two workers given the same job, exactly one gets a row back.
    A running job whose lease expired (its worker died) may be taken over directly.
    """
    now = _now()
    stmt = (
        update(Job)
        .where(
            Job.id == job_id,
            Job.attempts < Job.max_attempts,
            or_(Job.status == S.QUEUED, and_(Job.status == S.RUNNING, Job.lease_expires_at < now)),
        )
        .values(status=S.RUNNING.value, worker_id=worker_id, attempts=Job.attempts + 1,
                lease_expires_at=now + timedelta(seconds=lease_s), heartbeat_at=now,
                started_at=now, updated_at=now, stage=None, error=None)
        .returning(Job.id, Job.attempts)
        .execution_options(synchronize_session=False)
    )
    row = session.execute(stmt).first()
    if row is None:
        session.rollback()
        return None
    _event(session, job_id, "state", f"running on {worker_id} (attempt {row.attempts})",
           data={"status": S.RUNNING.value, "worker_id": worker_id, "attempt": row.attempts})
    session.commit()
    return session.get(Job, job_id, populate_existing=True)


def heartbeat(session: Session, job_id: str, worker_id: str, lease_s: float) -> bool:
    """Extend the lease; False when the job is cancelling or no longer this worker's (stop now)."""
    now = _now()
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.worker_id == worker_id, Job.status.in_(HELD_STATUSES))
        .values(lease_expires_at=now + timedelta(seconds=lease_s), heartbeat_at=now)
        .returning(Job.status)
        .execution_options(synchronize_session=False)
    )
    row = session.execute(stmt).first()
    session.commit()
    return row is not None and row.status == S.RUNNING


def set_stage(session: Session, job_id: str, worker_id: str, stage: str, progress: float | None = None) -> bool:
    values: dict[str, Any] = {"stage": stage, "updated_at": _now()}
    if progress is not None:
        values["progress"] = progress
    ok = _guarded(session, job_id, worker_id, (S.RUNNING,), values)
    if ok:
        _event(session, job_id, "stage", f"stage {stage}", data={"stage": stage})
    session.commit()
    return ok


def set_progress(session: Session, job_id: str, worker_id: str, progress: float, *,
                 event: dict[str, Any] | None = None, message: str = "") -> bool:
    """Store the job's progress (0..1); with ``event``, also write a progress event."""
    ok = _guarded(session, job_id, worker_id, (S.RUNNING,),
                  {"progress": max(0.0, min(1.0, progress)), "updated_at": _now()})
    if ok and event is not None:
        _event(session, job_id, "progress", message or f"{progress:.0%}", data=event)
    session.commit()
    return ok


def add_job_event(session: Session, job_id: str, type_: str, message: str, *, level: str = "info",
                  data: dict[str, Any] | None = None) -> None:
    """A plain event (warning, log) for a live job, in its own transaction."""
    _event(session, job_id, type_, message, level=level, data=data)
    session.commit()


def _guarded(session: Session, job_id: str, worker_id: str, statuses: Sequence[str],
             values: dict[str, Any]) -> bool:
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.worker_id == worker_id, Job.status.in_(statuses))
        .values(**values)
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    )
    return session.execute(stmt).first() is not None


def finish_job(session: Session, job_id: str, worker_id: str, result: dict[str, Any],
               artifacts: Sequence[dict[str, Any]]) -> bool:
    """running → succeeded with ``result`` and its artifact rows, all in one transaction.

    False (nothing written) when the job is no longer this worker's running job (cancel requested
    meanwhile, or the lease was lost): the caller then removes the files it published.
    """
    now = _now()
    ok = _guarded(session, job_id, worker_id, _FINISHABLE,
                  {"status": S.SUCCEEDED.value, "result": result, "progress": 1.0, "stage": None,
                   "finished_at": now, "updated_at": now, "lease_expires_at": None})
    if not ok:
        session.rollback()
        return False
    for a in artifacts:
        session.add(Artifact(job_id=job_id, path=a["path"], size_bytes=a["size_bytes"],
                             sha256=a["sha256"], storage_key=a["storage_key"]))
    total = sum(int(a["size_bytes"]) for a in artifacts)
    _event(session, job_id, "artifact", f"{len(artifacts)} files published",
           data={"count": len(artifacts), "size_bytes": total})
    _terminal(session, job_id, S.SUCCEEDED, "succeeded")
    session.commit()
    return True


def fail_job(session: Session, job_id: str, worker_id: str, code: str, message: str,
             data: dict[str, Any] | None = None) -> bool:
    """running → failed {code, message}; False when it is not this worker's running job."""
    now = _now()
    error = {"code": code, "message": message}
    ok = _guarded(session, job_id, worker_id, _FAILABLE,
                  {"status": S.FAILED.value, "error": error, "stage": None, "finished_at": now,
                   "updated_at": now, "lease_expires_at": None})
    if not ok:
        session.rollback()
        return False
    _terminal(session, job_id, S.FAILED, f"failed: {message}", level="error", data={"error": error, **(data or {})})
    session.commit()
    return True


def cancel_finish(session: Session, job_id: str, worker_id: str) -> bool:
    """The worker stopped a cancelling (or running) job: → cancelled."""
    now = _now()
    ok = _guarded(session, job_id, worker_id, _STOPPABLE,
                  {"status": S.CANCELLED.value, "stage": None, "finished_at": now, "updated_at": now,
                   "lease_expires_at": None})
    if not ok:
        session.rollback()
        return False
    _terminal(session, job_id, S.CANCELLED, "cancelled")
    session.commit()
    return True


def reap_expired(session: Session, now: datetime | None = None) -> list[str]:
    """Recover jobs whose worker stopped heart-beating; returns the ids changed.

    A running job goes back to the queue (with ``dispatched_at`` cleared so the outbox sends it
    again) while attempts < max_attempts, else fails with ``worker_lost``. A cancelling one
    becomes cancelled. Each row is moved by its own guarded UPDATE, so reapers in several
    processes at once never move a job twice.
    """
    now = now or _now()
    rows = session.execute(
        select(Job.id, Job.status, Job.attempts, Job.max_attempts, Job.worker_id)
        .where(Job.status.in_(HELD_STATUSES), Job.lease_expires_at < now)
        .order_by(Job.seq)
        .limit(500)
    ).all()
    session.rollback()  # end the read transaction; each move below is its own
    changed: list[str] = []
    for row in rows:
        base = update(Job).where(Job.id == row.id, Job.status == row.status,
                                 Job.lease_expires_at < now).execution_options(synchronize_session=False)
        if row.status in _REAP_CANCEL:
            values: dict[str, Any] = {"status": S.CANCELLED.value, "stage": None, "finished_at": now}
            ev = ("state", "cancelled (worker gone)", "info", {})
        elif row.status in _REQUEUEABLE and row.attempts < row.max_attempts:
            values = {"status": S.QUEUED.value, "stage": None, "dispatched_at": None}
            ev = ("retry", f"worker {row.worker_id} lost; queued again (attempt {row.attempts} of "
                  f"{row.max_attempts} used)", "warning",
                  {"status": S.QUEUED.value, "attempts": row.attempts, "worker_id": row.worker_id})
        elif row.status in _FAILABLE:
            error = {"code": "worker_lost",
                     "message": f"the worker running this job stopped responding {row.attempts} times; "
                                "giving up after max_attempts"}
            values = {"status": S.FAILED.value, "stage": None, "finished_at": now, "error": error}
            ev = ("state", "failed: worker lost", "error", {"error": error})
        else:
            continue
        values.update(worker_id=None, lease_expires_at=None, updated_at=now)
        if session.execute(base.values(**values).returning(Job.id)).first() is None:
            session.rollback()
            continue
        if values["status"] == S.QUEUED:
            _event(session, row.id, ev[0], ev[1], level=ev[2], data=ev[3])
        else:
            _terminal(session, row.id, values["status"], ev[1], level=ev[2], data=ev[3])
        session.commit()
        changed.append(row.id)
    return changed
