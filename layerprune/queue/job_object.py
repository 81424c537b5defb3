"""The job object: the body of ``GET /v1/jobs/{id}`` and the ``data`` of every webhook.

One definition for both readers (the API answers it, ``layerprune.webhooks`` sends it), kept
below them so that neither imports the other. The webhook secret is masked: it goes in once and
is never echoed back.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from layerprune.db.models import Job
from layerprune.queue.status import StatusLiteral

EXAMPLE_SPEC: dict[str, Any] = {
    "model": "bundled:smollm2-135m-instruct",
    "prune": {"metric": "block_influence", "num_layers": 6, "calibration": {"num_samples": 10, "seq_len": 128}},
}
_TIME = "2026-01-01T12:00:00Z"


class JobError(BaseModel):
    code: str
    message: str


class JobPublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "job_3k1f0q8z7v2m9x4c5b6n7a8s", "object": "job", "status": "queued", "stage": None,
        "progress": 0.0, "created_at": _TIME, "updated_at": _TIME, "started_at": None, "finished_at": None,
        "spec": EXAMPLE_SPEC, "result": None, "error": None, "attempts": 0,
        "max_attempts": 3, "metadata": {}, "priority": 0, "queue": "gpu", "cancel_requested_at": None,
    }]})

    id: str
    object: Literal["job"] = "job"
    status: StatusLiteral  # type: ignore[valid-type]
    # Nullable fields have a None default: FastAPI drops nulls from the documented examples.
    stage: Literal["prune", "finetune", "evaluate", "export"] | None = None
    progress: float
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    cancel_requested_at: datetime | None = None
    spec: dict[str, Any] = Field(description="the spec as accepted, with defaults filled in")
    result: dict[str, Any] | None = None
    error: JobError | None = None
    attempts: int
    max_attempts: int
    metadata: dict[str, Any]
    priority: int
    queue: Literal["gpu", "cpu"]

    @classmethod
    def from_row(cls, job: Job) -> JobPublic:
        error = None
        if job.error:
            error = JobError(code=str(job.error.get("code", "error")), message=str(job.error.get("message", "")))
        return cls(
            id=job.id, status=job.status, stage=job.stage, progress=job.progress, created_at=job.created_at,
            updated_at=job.updated_at, started_at=job.started_at, finished_at=job.finished_at,
            cancel_requested_at=job.cancel_requested_at, spec=mask_secrets(job.spec), result=job.result, error=error,
            attempts=job.attempts, max_attempts=job.max_attempts, metadata=job.metadata_ or {},
            priority=job.priority, queue=job.queue,  # type: ignore[arg-type]
        )


def mask_secrets(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with its webhook secret replaced: a secret goes in once and is never echoed back."""
    hook = spec.get("webhook") if isinstance(spec, dict) else None
    if isinstance(hook, dict) and hook.get("secret"):
        return {**spec, "webhook": {**hook, "secret": "***"}}
    return spec


def job_object(job: Job) -> dict[str, Any]:
    """The job exactly as GET /v1/jobs/{id} answers it, as JSON-ready data."""
    return JobPublic.from_row(job).model_dump(mode="json")
