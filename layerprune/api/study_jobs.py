"""A study's jobs: validated, created and dispatched through the jobs code path; cancelled together.

This is the one place studies touch the job queue: ``queue.transitions.create_job`` (as
``POST /v1/jobs`` calls it), the same dispatch (``queue.outbox.send_now``) and
``queue.transitions.request_cancel``. Each
candidate is an ordinary job, so more workers finish a study sooner and events, artifacts,
retries and cancel work as for any job.

Validation is as strict as for a job: the study's own fields first, then each candidate's job
spec exactly as ``POST /v1/jobs`` would validate it, a refusal being reported at the study field
the value came from (``axes.ratios[1]``, ``candidates[0].prune.metric``).
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from layerprune.api.errors import ApiError
from layerprune.api.routing import queue_for
from layerprune.api.schemas import JobCreate
from layerprune.api.validation import validate_job_spec
from layerprune.core.errors import LayerPruneError
from layerprune.db.models import Job, Study
from layerprune.db.studies import create_study, link_job, mark_cancel_requested, study_jobs
from layerprune.queue.outbox import send_now
from layerprune.queue.transitions import JobStateConflict, create_job, request_cancel
from layerprune.settings import Settings
from layerprune.studies.spec import Candidate, StudySpec, baseline_spec, expand
from layerprune.webhooks import validate_webhook_url

log = logging.getLogger(__name__)


def loc_param(loc: Any, prefix: str = "") -> str | None:
    """pydantic ``loc`` → a path with list indices kept: ("axes", "metrics", 2) → "axes.metrics[2]"."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in str(part) or "-" in str(part):
            continue  # a union member's type tag, not a field
        else:
            out += ("." if out else "") + str(part)
    return out or None


def _invalid(exc: ValidationError, prefix: str = "", candidate: Candidate | None = None,
             where: str = "") -> ApiError:
    err = exc.errors()[0]
    param = loc_param(err.get("loc", ()), prefix)
    if candidate is not None:
        param = candidate.study_param(param)
    message = f"{param or 'request'}: {err.get('msg', 'invalid value')}"
    if err.get("type") == "extra_forbidden":
        message = f"unknown field '{param}'"
    return ApiError(422, "invalid_request", where + message, param=param)


def parse_study(body: Any) -> StudySpec:
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_request", "a study is a JSON object")
    try:
        return StudySpec.model_validate(body)
    except ValidationError as exc:
        raise _invalid(exc) from None


def _validated_job(session: Session, tenant: str, spec: dict[str, Any], settings: Settings,
                   candidate: Candidate | None, index: int | None) -> JobCreate:
    where = f"candidate {index} ({candidate.label}): " if candidate is not None else "baseline: "
    try:
        job_spec = JobCreate.model_validate(spec)
        validate_job_spec(session, tenant, job_spec, settings)
    except ValidationError as exc:
        raise _invalid(exc, candidate=candidate, where=where) from None
    except LayerPruneError as exc:
        param = candidate.study_param(exc.param) if candidate is not None else exc.param
        raise ApiError(422, exc.code, where + exc.message, param=param) from None
    return job_spec


def validate_study(session: Session, tenant: str, study: StudySpec,
                   settings: Settings) -> tuple[JobCreate, list[tuple[Candidate, JobCreate]]]:
    """The baseline's and every candidate's job spec, each validated as ``POST /v1/jobs`` would."""
    candidates = expand(study)
    if len(candidates) > settings.max_study_candidates:
        raise ApiError(422, "too_many_candidates",
                       f"the study makes {len(candidates)} candidates; this service runs at most "
                       f"{settings.max_study_candidates} per study", param="axes" if study.axes else "candidates")
    baseline = _validated_job(session, tenant, baseline_spec(study), settings, None, None)
    out = []
    for i, c in enumerate(candidates):
        out.append((c, _validated_job(session, tenant, c.job_spec, settings, c, i)))
    if study.webhook is not None:
        validate_webhook_url(study.webhook.url, settings)
    return baseline, out


def _new_job(session: Session, tenant: str, study: Study, spec: JobCreate, role: str, settings: Settings) -> Job:
    stored = spec.model_dump(mode="json")
    stored["metadata"] = {**stored.get("metadata", {}), "study_id": study.id, "study_role": role}
    job = create_job(session, tenant, stored, queue=queue_for(spec),
                     max_attempts=settings.max_attempts)
    link_job(session, study, job)
    return job


def create_study_jobs(session: Session, tenant: str, study_spec: StudySpec, baseline: JobCreate,
                      candidates: list[tuple[Candidate, JobCreate]], settings: Settings) -> tuple[Study, list[Job]]:
    """Insert the study, its baseline job and one job per candidate (the caller commits, then dispatches)."""
    study = create_study(session, tenant, study_spec.model_dump(mode="json"))
    base_job = _new_job(session, tenant, study, baseline, "baseline", settings)
    jobs = [base_job]
    plan: list[dict[str, Any]] = []
    for candidate, spec in candidates:
        job = _new_job(session, tenant, study, spec, "candidate", settings)
        jobs.append(job)
        plan.append({"job_id": job.id, "label": candidate.label, "recipe": candidate.recipe})
    quality = study_spec.quality_name
    study.baseline_job_id = base_job.id
    study.plan = {"quality": quality, "higher_is_better": quality != "perplexity", "candidates": plan}
    session.flush()
    return study, jobs


def dispatch_jobs(session: Session, jobs: list[Job]) -> None:
    """Send each job to the broker as ``POST /v1/jobs`` does (the outbox sweep covers a failure)."""
    for job in jobs:
        send_now(session, job.id, job.queue, job.priority)


def cancel_study(session: Session, study: Study) -> int:
    """Cancel every unfinished job of ``study``; returns how many were asked to stop. The caller commits."""
    asked = 0
    for job in study_jobs(session, [study.id])[study.id]:
        if job.is_terminal:
            continue
        try:
            request_cancel(session, job)  # as POST /v1/jobs/{id}/cancel (its webhook row comes with it)
        except JobStateConflict:
            continue  # finished meanwhile
        asked += 1
    mark_cancel_requested(session, study)
    return asked
