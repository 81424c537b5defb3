"""Job events: the append-only history of a job, written in the transaction of what they describe."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from layerprune.db import ids
from layerprune.db.models import EVENT_TYPES, JobEvent


def add_event(
    session: Session,
    job_id: str,
    type: str,  # noqa: A002 - the column's name
    message: str,
    *,
    level: str = "info",
    data: Mapping[str, Any] | None = None,
) -> JobEvent:
    """Add one event to the session (the caller commits it with the state change it describes)."""
    if type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type!r}")
    if level not in ("info", "warning", "error"):
        raise ValueError(f"unknown event level {level!r}")
    evt = JobEvent(job_id=job_id, type=type, message=message, level=level, data=dict(data or {}))
    session.add(evt)
    session.flush()  # assigns seq now, so events of one transaction keep their order
    return evt


def list_events(session: Session, job_id: str, *, after_seq: int | None = None, limit: int = 100) -> list[JobEvent]:
    """Events of ``job_id`` in the order they happened, after the cursor ``after_seq``."""
    stmt = select(JobEvent).where(JobEvent.job_id == job_id)
    if after_seq is not None:
        stmt = stmt.where(JobEvent.seq > after_seq)
    return list(session.scalars(stmt.order_by(JobEvent.seq).limit(limit)))


def event_seq(session: Session, job_id: str, event_id: str) -> int | None:
    """The cursor position of ``event_id`` within ``job_id`` (None when it is not that job's)."""
    if not ids.could_be_id(event_id, ids.EVENT):
        return None
    return session.scalar(select(JobEvent.seq).where(JobEvent.id == event_id, JobEvent.job_id == job_id))
