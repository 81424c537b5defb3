"""Studies in the database: insert, read (newest first, cursor-stable), link jobs, finalize.

A study's jobs are ordinary jobs with ``study_id`` set (created through the jobs code path by
``layerprune.api.study_jobs``). Its live status is derived from them on read
(``layerprune.studies.view``); :func:`finalize_finished` writes the terminal status once, in the
transaction that queues the study's webhook, so the delivery row exists exactly when the study
has ended. It runs in the housekeeping loops of the API and of every worker (and after a study
read): guarded UPDATEs make it safe in many processes at once.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from layerprune.db import ids
from layerprune.db.jobs import Page
from layerprune.db.models import Job, Study, WebhookDelivery, utcnow
from layerprune.studies.view import study_object

log = logging.getLogger(__name__)


def create_study(session: Session, tenant: str, spec: dict[str, Any]) -> Study:
    """Insert a study (its jobs follow in the same transaction; the caller commits)."""
    study = Study(tenant=tenant, status="queued", spec=spec, metadata_=dict(spec.get("metadata") or {}), plan={})
    session.add(study)
    session.flush()
    return study


def link_job(session: Session, study: Study, job: Job) -> None:
    job.study_id = study.id
    session.flush()


def get_study(session: Session, tenant: str, study_id: str) -> Study | None:
    """The study if it belongs to ``tenant`` (another tenant's study is indistinguishable from none)."""
    if not ids.could_be_id(study_id, ids.STUDY):
        return None
    return session.scalar(select(Study).where(Study.id == study_id, Study.tenant == tenant))


def study_seq(session: Session, tenant: str, study_id: str) -> int | None:
    if not ids.could_be_id(study_id, ids.STUDY):
        return None
    return session.scalar(select(Study.seq).where(Study.id == study_id, Study.tenant == tenant))


def list_studies(session: Session, tenant: str, *, limit: int = 20, after_seq: int | None = None) -> Page:
    stmt = select(Study).where(Study.tenant == tenant)
    if after_seq is not None:
        stmt = stmt.where(Study.seq < after_seq)
    rows = list(session.scalars(stmt.order_by(Study.seq.desc()).limit(limit + 1)))
    return Page(rows[:limit], len(rows) > limit)


def study_jobs(session: Session, study_ids: list[str]) -> dict[str, list[Job]]:
    """The jobs of each study (one query for a whole page of studies)."""
    out: dict[str, list[Job]] = {sid: [] for sid in study_ids}
    if not study_ids:
        return out
    for job in session.scalars(select(Job).where(Job.study_id.in_(study_ids)).order_by(Job.seq)):
        out[job.study_id].append(job)  # type: ignore[index]
    return out


def mark_cancel_requested(session: Session, study: Study) -> None:
    if study.cancel_requested_at is None:
        study.cancel_requested_at = utcnow()
        session.flush()


def finalize_finished(session: Session, limit: int = 100) -> list[str]:
    """Write the terminal status of every unfinished study whose jobs have all ended, and queue its
    webhook (``study.<status>``); returns their ids. The caller's session is committed here."""
    done: list[str] = []
    open_ids = list(session.scalars(select(Study.id).where(Study.finished_at.is_(None)).order_by(Study.seq)
                                    .limit(limit)))
    jobs_by_study = study_jobs(session, open_ids)
    for sid in open_ids:
        study = session.get(Study, sid)
        if study is None:
            continue
        view = study_object(study, jobs_by_study.get(sid, []), {})
        if view["status"] not in ("succeeded", "failed", "cancelled"):
            continue
        now = utcnow()
        res = session.execute(update(Study).where(Study.id == sid, Study.finished_at.is_(None))
                              .values(status=view["status"], finished_at=now, updated_at=now))
        if not res.rowcount:
            continue  # another process finalized it first
        hook = (study.spec or {}).get("webhook") or {}
        if hook.get("url") and study.baseline_job_id:
            session.add(WebhookDelivery(job_id=study.baseline_job_id, study_id=sid, url=hook["url"],
                                        event_type=f"study.{view['status']}", status="pending", attempts=0,
                                        next_attempt_at=now, created_at=now))
        session.commit()
        log.info("study finished", extra={"study_id": sid, "status": view["status"]})
        done.append(sid)
    session.commit()
    return done
