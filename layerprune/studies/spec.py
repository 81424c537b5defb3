"""A study's request, and its expansion into one ordinary job spec per candidate recipe.

Torch-free (the API validates with it). A study names a base model, one ``evaluate`` spec for all,
and either ``axes`` (their product is the candidates) or an explicit ``candidates`` list. Shared
``prune`` settings (calibration, semantics, seed…) and ``finetune`` settings (steps, data…) go
into every candidate; the axes supply what varies. :func:`expand` returns each candidate's job
spec with ``origin``: which study field each part of it came from, so that a job-level refusal
(``prune.ratio``) is reported at the study's field (``axes.ratios[1]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from layerprune.core.errors import SpecError
from layerprune.core.spec import (
    BUNDLED_MODEL,
    EvaluateSpec,
    FinetuneMethod,
    FinetuneObjective,
    Metric,
    ReplaceMethod,
    StrictModel,
)
from layerprune.service_fields import Priority, WebhookSpec

# Set by the axes, so not allowed among the shared settings next to them.
AXIS_PRUNE_FIELDS = ("metric", "ratio", "num_layers", "layers", "replace")
AXIS_FINETUNE_FIELDS = ("method", "objective")
# Never more than this many candidates, whatever the server's limit (settings.max_study_candidates).
HARD_MAX_CANDIDATES = 1000


class Axes(StrictModel):
    """The recipes to compare: every combination of these values (``none`` healing ignores objectives)."""

    metrics: list[Metric] = Field(..., min_length=1, max_length=16)
    ratios: list[float] | None = Field(None, min_length=1, max_length=32)
    num_layers: list[int] | None = Field(None, min_length=1, max_length=32)
    replace: list[ReplaceMethod] = Field(default_factory=lambda: ["none"], min_length=1, max_length=2)
    heal_methods: list[FinetuneMethod] = Field(default_factory=lambda: ["none"], min_length=1, max_length=5)
    heal_objectives: list[FinetuneObjective] = Field(default_factory=lambda: ["lm"], min_length=1, max_length=2)

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, v: list[float] | None) -> list[float] | None:
        for i, r in enumerate(v or []):
            if not 0.0 < r < 1.0:
                raise SpecError(f"ratio {r} must be between 0 and 1 (exclusive)", param=f"axes.ratios[{i}]")
        return v

    @field_validator("num_layers")
    @classmethod
    def _counts(cls, v: list[int] | None) -> list[int] | None:
        for i, n in enumerate(v or []):
            if n < 1:
                raise SpecError(f"num_layers {n} must be at least 1", param=f"axes.num_layers[{i}]")
        return v

    @model_validator(mode="after")
    def _check(self) -> Axes:
        for name in ("metrics", "ratios", "num_layers", "replace", "heal_methods", "heal_objectives"):
            values = getattr(self, name) or []
            for i, v in enumerate(values):
                if v in values[:i]:
                    raise SpecError(f"{v!r} is listed twice", param=f"axes.{name}[{i}]")
        for i, m in enumerate(self.metrics):
            if m == "manual":
                raise SpecError("metric 'manual' names its own layers: give it as an explicit candidate",
                                param=f"axes.metrics[{i}]")
        if (self.ratios is None) == (self.num_layers is None):
            raise SpecError("give exactly one of 'ratios' or 'num_layers'", param="axes.ratios")
        return self


class CandidateSpec(StrictModel):
    """One explicit recipe: a prune spec and optionally healing (a label is made when none is given)."""

    label: str | None = Field(None, min_length=1, max_length=200)
    prune: dict[str, Any]
    finetune: dict[str, Any] | None = None


class Constraints(StrictModel):
    max_params: int | None = Field(None, ge=1)
    min_speedup: float | None = Field(None, gt=0.0, le=1000.0)


class StudySpec(StrictModel):
    model: str = Field(BUNDLED_MODEL, min_length=1, max_length=1024)
    revision: str | None = Field(None, max_length=256)
    axes: Axes | None = None
    candidates: list[CandidateSpec] | None = Field(None, min_length=1, max_length=HARD_MAX_CANDIDATES)
    prune: dict[str, Any] = Field(default_factory=dict)  # shared prune settings (calibration, semantics…)
    finetune: dict[str, Any] = Field(default_factory=dict)  # shared healing settings (max_steps, dataset…)
    evaluate: EvaluateSpec
    constraints: Constraints = Field(default_factory=Constraints)
    quality: Literal["mean_acc", "perplexity"] | None = None
    webhook: WebhookSpec | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    priority: Priority = 0

    @model_validator(mode="after")
    def _check(self) -> StudySpec:
        if (self.axes is None) == (self.candidates is None):
            raise SpecError("give exactly one of 'axes' or 'candidates'", param="axes")
        if self.axes is not None:
            for name in AXIS_PRUNE_FIELDS:
                if name in self.prune:
                    raise SpecError(f"prune.{name} is set by the axes", param=f"prune.{name}")
            for name in AXIS_FINETUNE_FIELDS:
                if name in self.finetune:
                    raise SpecError(f"finetune.{name} is set by the axes (heal_methods, heal_objectives)",
                                    param=f"finetune.{name}")
        if self.quality == "perplexity" and self.evaluate.perplexity is None:
            raise SpecError("quality 'perplexity' needs evaluate.perplexity", param="quality")
        if self.quality == "mean_acc" and not self.evaluate.tasks:
            raise SpecError("quality 'mean_acc' needs evaluate.tasks", param="quality")
        if self.evaluate.perplexity is None and not self.evaluate.tasks:
            raise SpecError("a study compares quality: evaluate needs 'perplexity' and/or 'tasks'",
                            param="evaluate")
        if self.constraints.min_speedup is not None and self.evaluate.speed is None:
            raise SpecError("constraints.min_speedup needs speed measured: set evaluate.speed",
                            param="constraints.min_speedup")
        if len(self.metadata) > 60:
            raise SpecError("metadata holds at most 60 keys in a study (its jobs add theirs)", param="metadata")
        return self

    @property
    def quality_name(self) -> str:
        """What "quality" means for this study: mean task accuracy when tasks are evaluated, else perplexity."""
        if self.quality is not None:
            return self.quality
        return "mean_acc" if self.evaluate.tasks else "perplexity"


@dataclass
class Candidate:
    label: str
    recipe: dict[str, Any]
    job_spec: dict[str, Any]
    origin: dict[str, str] = field(default_factory=dict)  # job-spec param prefix -> study param

    def study_param(self, job_param: str | None) -> str | None:
        """The study field a job-spec field came from (longest matching prefix), else the field itself."""
        if job_param is None:
            return None
        best = None
        for prefix in self.origin:
            if (job_param == prefix or job_param.startswith(prefix + ".")) and (best is None or len(prefix) > len(best)):
                best = prefix
        if best is None:
            return job_param
        return self.origin[best] + job_param[len(best):]


def label_of(recipe: dict[str, Any], layers: list[int] | None = None) -> str:
    """"angular · 25% · linear · distill": metric, amount, then replacement and healing when used."""
    parts = [str(recipe["metric"])]
    if layers is not None:  # metric "manual": the layers are the amount
        parts.append("layers " + ",".join(str(i) for i in layers))
    elif recipe.get("ratio") is not None:
        parts.append(f"{recipe['ratio'] * 100:g}%")
    elif recipe.get("num_layers") is not None:
        parts.append(f"{recipe['num_layers']} layers")
    if recipe.get("replace") not in (None, "none"):
        parts.append(str(recipe["replace"]))
    heal = recipe.get("heal")
    if heal:
        parts.append(heal["method"] + (" distill" if heal["objective"] == "distill" else ""))
    return " · ".join(parts)


def _recipe(prune: dict[str, Any], finetune: dict[str, Any] | None) -> dict[str, Any]:
    replace = prune.get("replace", "none")
    if isinstance(replace, dict):
        replace = replace.get("method", "none")
    heal = None
    if finetune is not None and finetune.get("method", "partial") != "none":
        heal = {"method": finetune.get("method", "partial"), "objective": finetune.get("objective", "lm")}
    return {"metric": prune.get("metric", "reverse_order"), "num_layers": prune.get("num_layers"),
            "ratio": prune.get("ratio"), "replace": replace, "heal": heal}


def _job_spec(study: StudySpec, prune: dict[str, Any], finetune: dict[str, Any] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": study.model, "revision": study.revision, "prune": prune,
                            "evaluate": {**study.evaluate.model_dump(mode="json"), "compare_base": True},
                            "priority": study.priority, "metadata": dict(study.metadata)}
    if finetune is not None:
        spec["finetune"] = finetune
    return spec


def expand(study: StudySpec) -> list[Candidate]:
    """Every candidate of ``study``, in a stable order (axes: metrics, amounts, replace, healing)."""
    out: list[Candidate] = []
    if study.candidates is not None:
        for i, c in enumerate(study.candidates):
            prune = {**study.prune, **c.prune}
            finetune = {**study.finetune, **c.finetune} if c.finetune is not None else None
            recipe = _recipe(prune, finetune)
            label = c.label or label_of(recipe, prune.get("layers"))
            origin = {"prune": f"candidates[{i}].prune", "finetune": f"candidates[{i}].finetune"}
            out.append(Candidate(label, recipe, _job_spec(study, prune, finetune), origin))
        return out
    axes = study.axes
    assert axes is not None
    amount_name = "ratios" if axes.ratios is not None else "num_layers"
    amounts = axes.ratios if axes.ratios is not None else axes.num_layers
    assert amounts is not None
    heals: list[tuple[int, int | None]] = []
    for hi, method in enumerate(axes.heal_methods):
        if method == "none":
            heals.append((hi, None))  # the objective does not apply: one candidate, not one per objective
            continue
        for oi in range(len(axes.heal_objectives)):
            heals.append((hi, oi))
    for mi, metric in enumerate(axes.metrics):
        for ai, amount in enumerate(amounts):
            for ri, replace in enumerate(axes.replace):
                for hi, oi in heals:
                    prune = {**study.prune, "metric": metric, "replace": replace,
                             ("ratio" if amount_name == "ratios" else "num_layers"): amount}
                    origin = {"prune": "prune", "prune.metric": f"axes.metrics[{mi}]",
                              f"prune.{'ratio' if amount_name == 'ratios' else 'num_layers'}": f"axes.{amount_name}[{ai}]",
                              "prune.replace": f"axes.replace[{ri}]", "finetune": "finetune"}
                    finetune = None
                    if oi is not None:
                        finetune = {**study.finetune, "method": axes.heal_methods[hi],
                                    "objective": axes.heal_objectives[oi]}
                        origin["finetune.method"] = f"axes.heal_methods[{hi}]"
                        origin["finetune.objective"] = f"axes.heal_objectives[{oi}]"
                    recipe = _recipe(prune, finetune)
                    out.append(Candidate(label_of(recipe), recipe, _job_spec(study, prune, finetune), origin))
    return out


def baseline_spec(study: StudySpec) -> dict[str, Any]:
    """The baseline job: the input model evaluated once, with the study's evaluate spec."""
    return {"model": study.model, "revision": study.revision,
            "evaluate": study.evaluate.model_dump(mode="json"), "priority": study.priority,
            "metadata": dict(study.metadata)}
