"""``/v1/jobs``: create (idempotent), list, get, cancel."""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, Request, Response
from pydantic import TypeAdapter
from starlette.concurrency import run_in_threadpool

from layerprune.api.deps import SessionDep, SettingsDep, TenantDep
from layerprune.api.errors import ApiError, not_found
from layerprune.api.idempotent import create_once
from layerprune.api.job_cache import GENERATION_SCOPE_KEY, JobCache
from layerprune.api.pagination import AfterQuery, LimitQuery, bad_cursor, envelope
from layerprune.api.routing import queue_for
from layerprune.api.schemas import JOB_CREATE_EXAMPLES, JobCreate, JobPublic, JobsPublic, error_responses
from layerprune.api.validation import metadata_problem, validate_job_spec
from layerprune.db import idempotency
from layerprune.db.jobs import get_job, job_seq, list_jobs
from layerprune.logs import bind
from layerprune.queue.outbox import send_now
from layerprune.queue.status import StatusLiteral
from layerprune.queue.transitions import JobStateConflict, create_job, request_cancel

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(alias="Idempotency-Key", max_length=255,
           description="Same key + same body within 24 h returns the same job (200); another body is 409"),
]
_METADATA_PARAM = re.compile(r"^metadata\[(.*)\]$", re.DOTALL)


def _load(session: Any, tenant: str, job_id: str) -> JobPublic:
    job = get_job(session, tenant, job_id)
    if job is None:  # cannot happen (jobs are never deleted), but never answer a 500
        raise ApiError(409, "idempotency_key_reused", "this Idempotency-Key refers to a missing job",
                       param="Idempotency-Key")
    return JobPublic.from_row(job)


@router.post(
    "",
    status_code=201,
    response_model=JobPublic,
    summary="Create a job",
    responses={200: {"model": JobPublic, "description": "Replay of an earlier request with the same Idempotency-Key"},
               **error_responses(401, 409, 413, 422, 503)},
)
def create_job_route(
    spec: Annotated[JobCreate, Body(openapi_examples=JOB_CREATE_EXAMPLES)],  # type: ignore[valid-type]
    session: SessionDep,
    tenant: TenantDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JobPublic:
    accepted = spec.model_dump(mode="json")  # the stored spec: defaults filled in

    def create() -> tuple[str, Any]:
        validate_job_spec(session, tenant, spec, settings)
        job = create_job(session, tenant, accepted, queue=queue_for(spec), max_attempts=settings.max_attempts)
        return job.id, job

    outcome = create_once(session, tenant, idempotency_key, idempotency.request_hash(accepted), "job",
                          settings.idempotency_ttl_hours, load=lambda job_id: _load(session, tenant, job_id),
                          create=create)
    if outcome.replayed is not None:
        response.status_code = 200
        return outcome.replayed
    job = outcome.created
    with bind(job_id=job.id, tenant=tenant):
        log.info("job created", extra={"queue": job.queue})
        send_now(session, job.id, job.queue, job.priority)
    session.refresh(job)
    return JobPublic.from_row(job)


@router.get("", response_model=JobsPublic, summary="List jobs, newest first",
            description="Filters: `status=` and `metadata[key]=value` (repeatable; all must match).",
            responses=error_responses(401, 422, 503),
            openapi_extra={"parameters": [{"name": "metadata[key]", "in": "query", "required": False,
                                           "description": "only jobs whose metadata has key = value",
                                           "schema": {"type": "string"}, "example": "nightly-retrain"}]})
def list_jobs_route(
    request: Request,
    session: SessionDep,
    tenant: TenantDep,
    limit: LimitQuery = 20,
    after: AfterQuery = None,
    status: Annotated[StatusLiteral | None, Query(description="only jobs in this status")] = None,
) -> dict[str, Any]:
    metadata: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        m = _METADATA_PARAM.match(name)
        if m:
            problem = metadata_problem(m.group(1), value)
            if problem is not None:
                raise ApiError(422, "invalid_request", problem[1],
                               param="metadata" if problem[0] == "key" else name)
            metadata[m.group(1)] = value
    after_seq = None
    if after is not None:
        after_seq = job_seq(session, tenant, after)
        if after_seq is None:
            raise bad_cursor(after)
    page = list_jobs(session, tenant, limit=limit, after_seq=after_seq, status=status, metadata=metadata)
    return envelope([JobPublic.from_row(j) for j in page.items], page.has_more)


@router.get("/{job_id}", response_model=JobPublic, summary="Get a job", responses=error_responses(401, 404, 503))
async def get_job_route(job_id: str, request: Request, tenant: TenantDep) -> Response:
    # The polling hot path (issue 11): the job's JSON from memory while the change feed vouches
    # for it (api/job_cache.py), else read on a worker thread. The bytes are those FastAPI makes
    # of the response model; ``response_model`` stays for the OpenAPI document.
    cache: JobCache = request.app.state.job_cache
    looked_up = request.scope.get(GENERATION_SCOPE_KEY)  # a miss of api/job_poll.py's
    if looked_up is not None and looked_up[:2] == (tenant, job_id):
        body, generation = None, looked_up[2]
    else:
        body, generation = await cache.lookup(tenant, job_id)
    if body is None:
        body = await run_in_threadpool(_read_job_json, request.app.state.read_session_factory, tenant, job_id)
        cache.store(tenant, job_id, body, generation)
    return Response(body, media_type="application/json")


_JOB_JSON = TypeAdapter(JobPublic)


def _read_job_json(factory: Any, tenant: str, job_id: str) -> bytes:
    session = factory()
    try:
        job = get_job(session, tenant, job_id)
        if job is None:
            raise not_found("job")
        return job_json(job)
    finally:
        session.close()


def job_json(job: Any) -> bytes:
    """The body of ``GET /v1/jobs/{id}`` for a job row, as FastAPI's response-model serialiser makes it."""
    return _JOB_JSON.dump_json(JobPublic.from_row(job), by_alias=True)


@router.post("/{job_id}/cancel", response_model=JobPublic, summary="Cancel a job",
             description="queued → cancelled at once; running → cancelling (the worker stops within seconds); "
                         "a finished job → 409.",
             responses=error_responses(401, 404, 409, 503))
def cancel_job_route(job_id: str, session: SessionDep, tenant: TenantDep) -> JobPublic:
    job = get_job(session, tenant, job_id)
    if job is None:
        raise not_found("job")
    try:
        job = request_cancel(session, job)  # a cancelled job's webhook delivery is added with it
        session.commit()
    except JobStateConflict as exc:
        session.rollback()
        raise ApiError(409, "job_finished", f"the job is already {exc.job.status}; it cannot be cancelled") from None
    with bind(job_id=job.id, tenant=tenant):
        log.info("cancel requested", extra={"status": job.status})
    return JobPublic.from_row(job)

