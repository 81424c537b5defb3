"""The job queue's state transitions, as guarded single-statement UPDATEs.

The database is the queue's truth; broker messages only say "look at job X". Every function
here is one transaction (it commits) that moves a job from an expected status to the next and
writes the matching event in the same transaction. Each UPDATE names the status (and, for a
running job, the worker) it expects, so a transition that lost a race changes nothing and
reports it, and a terminal state never changes again:

- ``claim_job``      queued (or running with an expired lease) → running; attempts + 1, lease
- ``heartbeat``      extends the lease of the claiming worker; False once cancelling/taken away
- ``finish_job``     running → succeeded, with the artifact rows (published files) atomically
- ``fail_job``       running → failed {code, message}
- ``cancel_finish``  cancelling/running → cancelled (the worker stopped)
- ``reap_expired``   running with an expired lease → queued again (attempt < max) or failed
                     ``worker_lost``; cancelling with an expired lease → cancelled
- ``pending_dispatch`` / ``mark_dispatched``: the outbox of jobs to (re)send to the broker
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from layerprune.db.models import Artifact, Job

RUNNING = ("running", "cancelling")


def _now() -> datetime:
    return datetime.now(UTC)


def _event(session: Session, job_id: str, type_: str, message: str, *, level: str = "info",
           data: dict[str, Any] | None = None) -> None:
    from layerprune.db.events import add_event

    add_event(session, job_id, type_, message, level=level, data=data or {})


def _terminal(session: Session, job_id: str, status: str, message: str, *, level: str = "info",
              data: dict[str, Any] | None = None) -> None:
    """What every terminal transition writes with it: the state event and the webhook delivery row."""
    from layerprune.webhooks import enqueue_delivery

    _event(session, job_id, "state", message, level=level, data={"status": status, **(data or {})})
    enqueue_delivery(session, job_id, status)


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
            or_(Job.status == "queued", and_(Job.status == "running", Job.lease_expires_at < now)),
        )
        .values(status="running", worker_id=worker_id, attempts=Job.attempts + 1,
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
           data={"status": "running", "worker_id": worker_id, "attempt": row.attempts})
    session.commit()
    return session.get(Job, job_id, populate_existing=True)


def heartbeat(session: Session, job_id: str, worker_id: str, lease_s: float) -> bool:
    """Extend the lease; False when the job is cancelling or no longer this worker's (stop now)."""
    now = _now()
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.worker_id == worker_id, Job.status.in_(RUNNING))
        .values(lease_expires_at=now + timedelta(seconds=lease_s), heartbeat_at=now)
        .returning(Job.status)
        .execution_options(synchronize_session=False)
    )
    row = session.execute(stmt).first()
    session.commit()
    return row is not None and row.status == "running"


def set_stage(session: Session, job_id: str, worker_id: str, stage: str, progress: float | None = None) -> bool:
    values: dict[str, Any] = {"stage": stage, "updated_at": _now()}
    if progress is not None:
        values["progress"] = progress
    ok = _guarded(session, job_id, worker_id, ("running",), values)
    if ok:
        _event(session, job_id, "stage", f"stage {stage}", data={"stage": stage})
    session.commit()
    return ok


def set_progress(session: Session, job_id: str, worker_id: str, progress: float, *,
                 event: dict[str, Any] | None = None, message: str = "") -> bool:
    """Store the job's progress (0..1); with ``event``, also write a progress event."""
    ok = _guarded(session, job_id, worker_id, ("running",),
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
    ok = _guarded(session, job_id, worker_id, ("running",),
                  {"status": "succeeded", "result": result, "progress": 1.0, "stage": None,
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
    _terminal(session, job_id, "succeeded", "succeeded")
    session.commit()
    return True


def fail_job(session: Session, job_id: str, worker_id: str, code: str, message: str,
             data: dict[str, Any] | None = None) -> bool:
    """running → failed {code, message}; False when it is not this worker's running job."""
    now = _now()
    error = {"code": code, "message": message}
    ok = _guarded(session, job_id, worker_id, ("running",),
                  {"status": "failed", "error": error, "stage": None, "finished_at": now,
                   "updated_at": now, "lease_expires_at": None})
    if not ok:
        session.rollback()
        return False
    _terminal(session, job_id, "failed", f"failed: {message}", level="error", data={"error": error, **(data or {})})
    session.commit()
    return True


def cancel_finish(session: Session, job_id: str, worker_id: str) -> bool:
    """The worker stopped a cancelling (or running) job: → cancelled."""
    now = _now()
    ok = _guarded(session, job_id, worker_id, RUNNING,
                  {"status": "cancelled", "stage": None, "finished_at": now, "updated_at": now,
                   "lease_expires_at": None})
    if not ok:
        session.rollback()
        return False
    _terminal(session, job_id, "cancelled", "cancelled")
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
        .where(Job.status.in_(RUNNING), Job.lease_expires_at < now)
        .order_by(Job.seq)
        .limit(500)
    ).all()
    session.rollback()  # end the read transaction; each move below is its own
    changed: list[str] = []
    for row in rows:
        base = update(Job).where(Job.id == row.id, Job.status == row.status,
                                 Job.lease_expires_at < now).execution_options(synchronize_session=False)
        if row.status == "cancelling":
            values: dict[str, Any] = {"status": "cancelled", "stage": None, "finished_at": now}
            ev = ("state", "cancelled (worker gone)", "info", {"status": "cancelled"})
        elif row.attempts < row.max_attempts:
            values = {"status": "queued", "stage": None, "dispatched_at": None}
            ev = ("retry", f"worker {row.worker_id} lost; queued again (attempt {row.attempts} of "
                  f"{row.max_attempts} used)", "warning",
                  {"status": "queued", "attempts": row.attempts, "worker_id": row.worker_id})
        else:
            error = {"code": "worker_lost",
                     "message": f"the worker running this job stopped responding {row.attempts} times; "
                                "giving up after max_attempts"}
            values = {"status": "failed", "stage": None, "finished_at": now, "error": error}
            ev = ("state", "failed: worker lost", "error", {"status": "failed", "error": error})
        values.update(worker_id=None, lease_expires_at=None, updated_at=now)
        if session.execute(base.values(**values).returning(Job.id)).first() is None:
            session.rollback()
            continue
        if values["status"] == "queued":
            _event(session, row.id, ev[0], ev[1], level=ev[2], data=ev[3])
        else:
            _terminal(session, row.id, values["status"], ev[1], level=ev[2], data=ev[3])
        session.commit()
        changed.append(row.id)
    return changed


def pending_dispatch(session: Session, limit: int = 100, *,
                     redispatch_after_s: float | None = None) -> list[tuple[str, str, int]]:
    """(job id, queue, priority) of queued jobs to send: never sent, or sent long ago and still waiting.

    The re-send wait doubles with each send (``redispatch_after_s × 2^(dispatch_count−1)``, at
    most 6 h), so a message a broker lost is replaced without flooding a long queue with copies.
    """
    from layerprune.dispatch import _redispatch_due

    now = _now()
    cond = Job.dispatched_at.is_(None)
    if redispatch_after_s is not None:
        cond = or_(cond, Job.dispatched_at < now - timedelta(seconds=redispatch_after_s))
    rows = session.execute(
        select(Job.id, Job.queue, Job.priority, Job.dispatched_at, Job.dispatch_count)
        .where(Job.status == "queued", cond)
        .order_by(Job.priority.desc(), Job.seq)
        .limit(limit)
    ).all()
    out = []
    for r in rows:
        if r.dispatched_at is None or (
            redispatch_after_s is not None
            and _redispatch_due(r.dispatched_at, r.dispatch_count, now, redispatch_after_s)
        ):
            out.append((r.id, r.queue, int(r.priority or 0)))
    return out


def mark_dispatched(session: Session, job_id: str) -> bool:
    """Record a send (the outbox entry is done); a no-op once the job left ``queued``."""
    now = _now()
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued")
        .values(dispatched_at=now, dispatch_count=Job.dispatch_count + 1)
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
