"""Reading jobs: get one (tenant-scoped), list them (newest first, cursor-stable).

Every change of a job (create, dispatch, cancel, claim, finish…) is a transition of
``layerprune.queue.transitions``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, exists, func, select
from sqlalchemy.orm import Session

from layerprune.db import ids
from layerprune.db.models import Job


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
