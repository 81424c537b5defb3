"""Uploaded data files (fine-tuning, evaluation and calibration text) of a tenant."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from layerprune.core import refs
from layerprune.core.spec import DATASET_FIELDS, field_at
from layerprune.db import ids
from layerprune.db.jobs import Page
from layerprune.db.models import File, Job
from layerprune.queue.status import LIVE_STATUSES


def file_refs(spec: dict[str, Any]) -> dict[str, str]:
    """``{json path: file id}`` for every uploaded file a stored spec names (core's data-set fields)."""
    refs_ = {}
    for path in DATASET_FIELDS:
        value = field_at(spec, path)
        if isinstance(value, str) and refs.is_file(value):
            refs_[path] = value
    return refs_


def get_file(session: Session, tenant: str, file_id: str) -> File | None:
    """A live (not deleted) file of ``tenant``."""
    if not ids.could_be_id(file_id, ids.FILE):
        return None
    return session.scalar(select(File).where(File.id == file_id, File.tenant == tenant, File.deleted_at.is_(None)))


def file_seq(session: Session, tenant: str, file_id: str) -> int | None:
    if not ids.could_be_id(file_id, ids.FILE):
        return None
    return session.scalar(select(File.seq).where(File.id == file_id, File.tenant == tenant))


def list_files(session: Session, tenant: str, *, limit: int = 20, after_seq: int | None = None,
               purpose: str | None = None) -> Page:
    stmt = select(File).where(File.tenant == tenant, File.deleted_at.is_(None))
    if purpose is not None:
        stmt = stmt.where(File.purpose == purpose)
    if after_seq is not None:
        stmt = stmt.where(File.seq < after_seq)
    rows = list(session.scalars(stmt.order_by(File.seq.desc()).limit(limit + 1)))
    return Page(rows[:limit], len(rows) > limit)


def live_jobs_using(session: Session, tenant: str, file_id: str) -> list[str]:
    """Ids of the tenant's queued/running/cancelling jobs whose spec names ``file_id``."""
    rows = session.execute(select(Job.id, Job.spec).where(Job.tenant == tenant, Job.status.in_(LIVE_STATUSES)))
    return [job_id for job_id, spec in rows if file_id in file_refs(spec or {}).values()]
