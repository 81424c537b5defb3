"""Retention: ``DELETE /v1/jobs/{id}`` removes a finished job's artifacts (store and rows).

The job itself, its events and its metrics stay (history and dashboards keep working); its
``result`` gains ``artifacts_deleted_at`` and an empty ``artifacts`` list, and an ``artifact``
event records what was removed. A live job (queued, running, cancelling) answers 409: its
worker may still be publishing. Rows go first, in one transaction with the event, then the
stored files: if the store fails after that, nothing points at the leftovers, and repeating the
DELETE (it is idempotent) removes them.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter
from sqlalchemy import delete, func, select

from layerprune.api.deps import SessionDep, SettingsDep, TenantDep
from layerprune.api.errors import ApiError, not_found
from layerprune.api.schemas import JobPublic, error_responses
from layerprune.artifact_store import get_store
from layerprune.db.events import add_event
from layerprune.db.jobs import get_job
from layerprune.db.models import Artifact
from layerprune.queue.status import LIVE_STATUSES

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.delete("/{job_id}", response_model=JobPublic, summary="Delete a finished job's artifacts",
               description="Removes the stored output files and their artifact rows of a succeeded, failed or "
                           "cancelled job; the job record and its events remain. A live job answers 409.",
               responses=error_responses(401, 404, 409, 503))
def delete_job_artifacts(job_id: str, session: SessionDep, tenant: TenantDep, settings: SettingsDep) -> JobPublic:
    job = get_job(session, tenant, job_id)
    if job is None:
        raise not_found("job")
    if job.status in LIVE_STATUSES:
        raise ApiError(409, "job_live", f"the job is {job.status}; cancel it or wait until it ends")
    count, total = session.execute(select(func.count(), func.coalesce(func.sum(Artifact.size_bytes), 0))
                                   .where(Artifact.job_id == job.id)).one()
    if count:
        session.execute(delete(Artifact).where(Artifact.job_id == job.id))
        now = datetime.now(UTC)
        job.result = {**(job.result or {}), "artifacts": [],
                      "artifacts_deleted_at": now.isoformat().replace("+00:00", "Z")}
        add_event(session, job.id, "artifact", f"artifacts deleted ({count} files, {int(total)} bytes)",
                  data={"deleted": True, "count": int(count), "size_bytes": int(total)})
    session.commit()
    try:
        get_store(settings).delete_prefix(f"{tenant}/{job.id}")
    except Exception as exc:  # noqa: BLE001 - the rows are gone; a repeated DELETE finishes the job
        raise ApiError(503, "storage_error", f"the artifact store could not delete the files ({type(exc).__name__});"
                       " retry the request") from exc
    session.refresh(job)
    return JobPublic.from_row(job)
