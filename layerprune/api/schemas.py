"""Request and response bodies (DTOs), kept apart from the ORM models.

``JobCreate`` is core's ``JobSpec`` (the model and the stages: one definition of a valid spec,
shared by the API, the worker and the docs) plus what only the service keeps: the webhook, the
metadata and the priority. Responses are built from rows with ``from_row``; the job object itself
(``JobPublic``) lives in ``layerprune.queue.job_object``, shared with the webhooks.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from layerprune.core.errors import SpecError
from layerprune.core.spec import JobSpec
from layerprune.db.models import Artifact, File, JobEvent
from layerprune.queue.job_object import EXAMPLE_SPEC, JobPublic
from layerprune.service_fields import METADATA_MAX_KEYS, Priority, WebhookSpec


class JobCreate(JobSpec):
    """A job request: core's spec, and the service's own fields beside it. The whole body is
    stored as the job's ``spec``; metadata and priority also get columns of their own."""

    webhook: WebhookSpec | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    priority: Priority = 0

    @model_validator(mode="after")
    def _metadata_size(self) -> JobCreate:
        if len(self.metadata) > METADATA_MAX_KEYS:
            raise SpecError(f"metadata holds at most {METADATA_MAX_KEYS} keys", param="metadata")
        return self


# Published (OpenAPI component, validation errors) under core's name, as the request body has been
# since the first release: a generated client's type must not be renamed under it. The schema is
# rebuilt because pydantic fixes a model's reference name when the class is created.
JobCreate.__name__ = JobCreate.__qualname__ = "JobSpec"
JobCreate.model_rebuild(force=True)

JOB_CREATE_EXAMPLES: dict[str, dict[str, Any]] = {
    "paper_recipe": {
        "summary": "Reverse-order 25% + partial healing + evaluation (the paper's recipe)",
        "value": {
            "model": "bundled:smollm2-135m-instruct",
            "prune": {"metric": "reverse_order", "ratio": 0.25},
            "finetune": {"method": "partial", "trainable_last_layers": 3, "dataset": "bundled:instructions",
                         "format": "alpaca", "epochs": 2, "learning_rate": 1e-5},
            "evaluate": {"perplexity": {"dataset": "bundled:wikitext-like", "seq_len": 128},
                         "tasks": ["arc_easy", "piqa"], "limit": 200},
            "metadata": {"pipeline": "nightly-retrain"},
        },
    },
    "prune_only": {
        "summary": "Remove 6 layers chosen by block influence",
        "value": EXAMPLE_SPEC,
    },
    "evaluate_only": {
        "summary": "Evaluate a model as it is",
        "value": {"model": "bundled:smollm2-135m-instruct", "evaluate": {"tasks": ["arc_easy"], "limit": 100}},
    },
}

_TIME = "2026-01-01T12:00:00Z"


T = TypeVar("T")


class ListPublic(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool
    last_id: str | None


class JobsPublic(ListPublic[JobPublic]):
    pass


class EventPublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "evt_9d8c7b6a5f4e3d2c1b0a9z8y", "object": "event", "job_id": "job_3k1f0q8z7v2m9x4c5b6n7a8s",
        "created_at": _TIME, "level": "info", "type": "progress", "message": "finetune step 40/400",
        "data": {"step": 40, "loss": 2.31, "tokens_per_s": 5120.0, "eta_s": 812.0},
    }]})

    id: str
    object: Literal["event"] = "event"
    job_id: str
    created_at: datetime
    level: Literal["info", "warning", "error"]
    type: str
    message: str
    data: dict[str, Any]

    @classmethod
    def from_row(cls, evt: JobEvent) -> EventPublic:
        return cls(id=evt.id, job_id=evt.job_id, created_at=evt.created_at, level=evt.level,  # type: ignore[arg-type]
                   type=evt.type, message=evt.message, data=evt.data or {})


class EventsPublic(ListPublic[EventPublic]):
    pass


class ArtifactPublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "path": "model.safetensors", "size_bytes": 214531072,
        "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "url": "https://layerprune.example/v1/jobs/job_3k1f0q8z7v2m9x4c5b6n7a8s/artifacts/model.safetensors",
    }]})

    path: str
    size_bytes: int
    sha256: str
    url: str

    @classmethod
    def from_row(cls, art: Artifact, url: str) -> ArtifactPublic:
        return cls(path=art.path, size_bytes=art.size_bytes, sha256=art.sha256, url=url)


class FilePublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "file_7h6g5f4d3s2a1q0w9e8r7t6y", "object": "file", "filename": "train.jsonl",
        "size_bytes": 52311, "sha256": "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
        "purpose": "finetune", "created_at": _TIME, "num_records": 120, "formats": ["alpaca"],
    }]})

    id: str
    object: Literal["file"] = "file"
    filename: str
    size_bytes: int
    sha256: str
    purpose: Literal["finetune", "evaluate", "calibration"]
    created_at: datetime
    num_records: int
    formats: list[str] | None = Field(None, description=(
        "what every record of the file fits: fine-tuning formats (alpaca, dolly, text, chat) and "
        "'texts' (calibration or perplexity text); null for files uploaded before these checks"))

    @classmethod
    def from_row(cls, f: File) -> FilePublic:
        return cls(id=f.id, filename=f.filename, size_bytes=f.size_bytes, sha256=f.sha256,
                   purpose=f.purpose, created_at=f.created_at, num_records=f.num_records)  # type: ignore[arg-type]


class FilesPublic(ListPublic[FilePublic]):
    pass


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class ErrorDetail(BaseModel):
    code: str = Field(examples=["invalid_request"])
    message: str = Field(examples=["prune.ratio: Input should be less than 1"])
    param: str | None = Field(examples=["prune.ratio"])


class ErrorPublic(BaseModel):
    """Every 4xx and 5xx answer has this shape."""

    error: ErrorDetail


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries for the error statuses a route can answer."""
    described = {
        400: "Bad request", 401: "Missing or invalid API key", 404: "Not found (or another tenant's)",
        409: "Conflict", 413: "Body too large", 415: "Unsupported media type", 416: "Range not satisfiable",
        422: "Invalid input; `param` names the field", 503: "Database unavailable",
    }
    return {c: {"model": ErrorPublic, "description": described.get(c, "Error")} for c in codes}
