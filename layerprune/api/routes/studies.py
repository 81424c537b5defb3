"""``/v1/studies``: create (idempotent), list, get, cancel. Each candidate is an ordinary job."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Body, Response

from layerprune.api.deps import SessionDep, SettingsDep, TenantDep
from layerprune.api.errors import ApiError, not_found
from layerprune.api.idempotent import create_once
from layerprune.api.pagination import AfterQuery, LimitQuery, bad_cursor
from layerprune.api.routes.jobs import IdempotencyKeyHeader
from layerprune.api.schemas import error_responses
from layerprune.api.study_jobs import (
    cancel_study,
    create_study_jobs,
    dispatch_jobs,
    parse_study,
    validate_study,
)
from layerprune.db import idempotency
from layerprune.db.studies import finalize_finished, get_study, list_studies, study_jobs, study_seq
from layerprune.logs import bind
from layerprune.queue.study_object import study_public
from layerprune.studies.schemas import StudiesPublic, StudyPublic
from layerprune.studies.spec import StudySpec

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/studies", tags=["studies"])

STUDY_EXAMPLE = {
    "model": "bundled:smollm2-135m-instruct",
    "axes": {"metrics": ["block_influence", "taylor", "magnitude_l2"], "ratios": [0.25, 0.5]},
    "prune": {"calibration": {"num_samples": 8, "seq_len": 128}},
    "evaluate": {"perplexity": {"max_windows": 20}, "tasks": ["arc_easy"], "limit": 100, "speed": True},
    "constraints": {"min_speedup": 1.2},
}


def _load(session: Any, tenant: str, study_id: str) -> dict[str, Any]:
    study = get_study(session, tenant, study_id)
    if study is None:
        raise ApiError(409, "idempotency_key_reused", "this Idempotency-Key refers to another kind of object",
                       param="Idempotency-Key")
    return study_public(session, study)


@router.post("", status_code=201, response_model=StudyPublic, summary="Create a study",
             description="Compare pruning recipes: one job per candidate (axes product or explicit list), "
                         "one baseline evaluation, Pareto fronts and a recommendation. See docs/contract.md.",
             responses={200: {"model": StudyPublic,
                              "description": "Replay of an earlier request with the same Idempotency-Key"},
                        **error_responses(401, 409, 413, 422, 503)},
             openapi_extra={"requestBody": {"content": {"application/json": {
                 "schema": StudySpec.model_json_schema(), "example": STUDY_EXAMPLE}}, "required": True}})
def create_study_route(
    body: Annotated[Any, Body()],
    session: SessionDep,
    tenant: TenantDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: IdempotencyKeyHeader = None,
) -> dict[str, Any]:
    spec = parse_study(body)
    accepted = spec.model_dump(mode="json")

    def create() -> tuple[str, Any]:
        baseline, candidates = validate_study(session, tenant, spec, settings)
        study, jobs = create_study_jobs(session, tenant, spec, baseline, candidates, settings)
        return study.id, (study, jobs)

    outcome = create_once(session, tenant, idempotency_key, idempotency.request_hash(accepted), "study",
                          settings.idempotency_ttl_hours, load=lambda study_id: _load(session, tenant, study_id),
                          create=create)
    if outcome.replayed is not None:
        response.status_code = 200
        return outcome.replayed
    study, jobs = outcome.created
    with bind(tenant=tenant):
        log.info("study created", extra={"study_id": study.id, "jobs": len(jobs)})
        dispatch_jobs(session, jobs)
    session.refresh(study)
    return study_public(session, study)


@router.get("", response_model=StudiesPublic, summary="List studies, newest first",
            responses=error_responses(401, 422, 503))
def list_studies_route(session: SessionDep, tenant: TenantDep, limit: LimitQuery = 20,
                       after: AfterQuery = None) -> dict[str, Any]:
    after_seq = None
    if after is not None:
        after_seq = study_seq(session, tenant, after)
        if after_seq is None:
            raise bad_cursor(after)
    page = list_studies(session, tenant, limit=limit, after_seq=after_seq)
    jobs = study_jobs(session, [s.id for s in page.items])
    items = [study_public(session, s, jobs[s.id]) for s in page.items]
    return {"object": "list", "data": items, "has_more": page.has_more,
            "last_id": items[-1]["id"] if items else None}


@router.get("/{study_id}", response_model=StudyPublic, summary="Get a study",
            responses=error_responses(401, 404, 503))
def get_study_route(study_id: str, session: SessionDep, tenant: TenantDep) -> dict[str, Any]:
    study = get_study(session, tenant, study_id)
    if study is None:
        raise not_found("study")
    return study_public(session, study)


@router.post("/{study_id}/cancel", response_model=StudyPublic, summary="Cancel a study",
             description="Cancels every unfinished candidate (and the baseline); a finished study → 409.",
             responses=error_responses(401, 404, 409, 503))
def cancel_study_route(study_id: str, session: SessionDep, tenant: TenantDep) -> dict[str, Any]:
    study = get_study(session, tenant, study_id)
    if study is None:
        raise not_found("study")
    view = study_public(session, study)
    if view["status"] in ("succeeded", "failed", "cancelled"):
        raise ApiError(409, "study_finished", f"the study is already {view['status']}; it cannot be cancelled")
    asked = cancel_study(session, study)
    session.commit()
    finalize_finished(session)  # all were queued: the study is cancelled now, and its webhook queued
    with bind(tenant=tenant):
        log.info("study cancel requested", extra={"study_id": study.id, "jobs": asked})
    session.refresh(study)
    return study_public(session, study)
