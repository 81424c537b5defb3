"""The study object exactly as ``GET /v1/studies/{id}`` answers it, for the API and the webhook
sender alike (beside ``job_object``, below both, so that neither imports the other)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from layerprune.db.models import Job, Study
from layerprune.db.studies import study_jobs
from layerprune.queue.job_object import mask_secrets
from layerprune.studies.schemas import StudyPublic
from layerprune.studies.view import study_object


def study_public(session: Session, study: Study, jobs: list[Job] | None = None) -> dict[str, Any]:
    """The study (webhook secret masked), serialised through the published model (times as jobs')."""
    if jobs is None:
        jobs = study_jobs(session, [study.id])[study.id]
    view = study_object(study, jobs, mask_secrets(dict(study.spec or {})))
    return StudyPublic.model_validate(view).model_dump(mode="json")
