"""Response bodies of ``/v1/studies`` (docs/contract.md "Studies"); built by ``studies.view``."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel


class StudySpeed(BaseModel):
    prefill_tokens_per_s: float | None
    decode_tokens_per_s: float | None
    batch_size: int


class StudyBaselineResults(BaseModel):
    perplexity: float | None
    mean_acc: float | None
    tasks: dict[str, dict[str, Any]]


class StudyBaseline(BaseModel):
    job_id: str | None
    status: str | None
    params: int | None
    results: StudyBaselineResults
    speed: StudySpeed | None


class StudyQuality(BaseModel):
    name: Literal["mean_acc", "perplexity"]
    higher_is_better: bool


class StudyHeal(BaseModel):
    method: str
    objective: str


class StudyRecipe(BaseModel):
    metric: str
    num_layers: int | None
    ratio: float | None
    replace: str
    heal: StudyHeal | None


class StudyCandidateResults(BaseModel):
    params: int | None
    perplexity: float | None
    mean_acc: float | None
    quality: float | None
    speedup: float | None


class StudyParetoFlags(BaseModel):
    params: bool
    speed: bool


class StudyCandidate(BaseModel):
    job_id: str
    label: str
    status: str | None
    recipe: StudyRecipe
    results: StudyCandidateResults
    pareto: StudyParetoFlags
    meets_constraints: bool | None


class StudyFronts(BaseModel):
    params: list[str]
    speed: list[str]


class StudyRecommendation(BaseModel):
    job_id: str
    reason: str


class StudyProgress(BaseModel):
    done: int
    total: int


class StudyPublic(BaseModel):
    id: str
    object: Literal["study"] = "study"
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    cancel_requested_at: datetime | None
    model: str | None
    metadata: dict[str, str]
    spec: dict[str, Any]
    baseline: StudyBaseline
    quality: StudyQuality
    candidates: list[StudyCandidate]
    pareto: StudyFronts
    recommendation: StudyRecommendation | None
    progress: StudyProgress


class StudiesPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[StudyPublic]
    has_more: bool
    last_id: str | None
