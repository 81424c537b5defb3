"""The job spec: what a client asks for, with the paper's recipe as the defaults.

Torch-free on purpose: the API validates specs and publishes their JSON Schema without importing
torch. Structural problems (wrong type, value out of range) are pydantic errors whose ``loc`` is
the field's path; checks that need the model's layer count live in :func:`resolve_layer_count`
and raise :class:`SpecError` naming the field.

Defaults follow Lu et al. 2024 (shared/METHODS.md): reverse-order removal of 25% of layers, then
partial healing of lm_head + final norm + the last 3 remaining layers (AdamW, lr 1e-5, 2 epochs,
batch 64 = 4 x 16, 100 warm-up steps, cutoff 256, seed 42).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from layerprune.core.errors import SpecError

BUNDLED_MODEL = "bundled:smollm2-135m-instruct"
DEFAULT_CALIBRATION_DATASET = "bundled:wikipedia-calibration"
DEFAULT_FINETUNE_DATASET = "bundled:instructions"
DEFAULT_PERPLEXITY_DATASET = "bundled:wikipedia-eval"

Metric = Literal[
    "reverse_order",
    "random",
    "magnitude_l1",
    "magnitude_l2",
    "taylor",
    "ppl",
    "block_influence",
    "angular",
    "manual",
]
METRICS: tuple[str, ...] = Metric.__args__  # type: ignore[attr-defined]

FinetuneMethod = Literal["partial", "lora", "qlora", "full", "none"]
DataFormat = Literal["alpaca", "dolly", "text", "chat"]
TaskName = Literal[
    "arc_easy", "arc_challenge", "piqa", "hellaswag", "openbookqa", "winogrande", "boolq", "mmlu"
]
TASKS: tuple[str, ...] = TaskName.__args__  # type: ignore[attr-defined]

NonNegInt = Annotated[int, Field(ge=0)]


class _Strict(BaseModel):
    # Unknown fields are errors: a typo in a spec must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid")


class CalibrationSpec(_Strict):
    """Text the data-driven metrics (taylor, ppl, block_influence, angular) score on.

    The default is a calibration split of bundled Wikipedia paragraphs that is disjoint from
    every evaluation text (the paper's code calibrates PPL on WikiText-2 *test*; we do not).
    """

    dataset: str = DEFAULT_CALIBRATION_DATASET
    num_samples: int = Field(10, ge=1, le=100_000)
    seq_len: int = Field(128, ge=2, le=1_048_576)
    batch_size: int = Field(1, ge=1, le=4096)
    seed: int = 42


class PruneSpec(_Strict):
    """Which layers to remove and how to choose them (shared/METHODS.md §1)."""

    metric: Metric = "reverse_order"
    ratio: float | None = Field(None, gt=0.0, lt=1.0)
    num_layers: int | None = Field(None, ge=1)
    layers: list[NonNegInt] | None = None
    iterative_step: int | None = Field(None, ge=1)
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    protect_layers: list[NonNegInt] = Field(default_factory=list)
    seed: int = 42
    # "paper": the definitions of the paper and its peers (per-token BI over every layer,
    # Frobenius norm for magnitude_l2). "reference_code": the paper's released code (one cosine
    # over all calibration windows flattened together, last layer never scored; sum of squares without the root).
    semantics: Literal["paper", "reference_code"] = "paper"
    # Heal between rounds of iterative pruning with the job's finetune spec (paper §4.3).
    heal_between_rounds: bool = False

    @model_validator(mode="before")
    @classmethod
    def _default_ratio(cls, data: Any) -> Any:
        # The paper's default is 25% when no amount is given at all.
        if isinstance(data, dict) and not any(data.get(k) is not None for k in ("ratio", "num_layers", "layers")):
            if data.get("metric", "reverse_order") != "manual":
                data = {**data, "ratio": 0.25}
        return data

    @model_validator(mode="after")
    def _exactly_one_amount(self) -> PruneSpec:
        given = [k for k in ("ratio", "num_layers", "layers") if getattr(self, k) is not None]
        if self.metric == "manual":
            if self.layers is None:
                raise SpecError("metric 'manual' needs 'layers'", param="prune.layers")
            if len(given) > 1:
                raise SpecError("give only 'layers' with metric 'manual'", param="prune." + given[0])
        else:
            if self.layers is not None:
                raise SpecError("'layers' is only for metric 'manual'", param="prune.layers")
            if len(given) != 1:
                raise SpecError("give exactly one of 'ratio' or 'num_layers'", param="prune.ratio")
        if self.layers is not None:
            if not self.layers:
                raise SpecError("'layers' must name at least one layer", param="prune.layers")
            if len(set(self.layers)) != len(self.layers):
                raise SpecError("'layers' has duplicate indices", param="prune.layers")
        if len(set(self.protect_layers)) != len(self.protect_layers):
            raise SpecError("'protect_layers' has duplicate indices", param="prune.protect_layers")
        if self.layers and set(self.layers) & set(self.protect_layers):
            raise SpecError("'layers' names a protected layer", param="prune.layers")
        return self


class FinetuneSpec(_Strict):
    """Healing after pruning (shared/METHODS.md §3); the paper's values by default."""

    method: FinetuneMethod = "partial"
    trainable_last_layers: int = Field(3, ge=0)
    train_lm_head: bool = True
    dataset: str = DEFAULT_FINETUNE_DATASET
    format: DataFormat = "alpaca"
    epochs: float = Field(2, gt=0, le=1000)
    max_steps: int | None = Field(None, ge=1)
    learning_rate: float = Field(1e-5, gt=0, le=1.0)
    batch_size: int = Field(64, ge=1, le=65_536)
    micro_batch_size: int = Field(4, ge=1, le=65_536)
    warmup_steps: int = Field(100, ge=0)
    max_seq_len: int = Field(256, ge=2, le=1_048_576)
    seed: int = 42
    validation_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    checkpoint_every: int = Field(50, ge=1)
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    packing: bool = False
    cache_trunk: bool = True
    lora_r: int = Field(8, ge=1, le=4096)
    lora_alpha: float = Field(16, gt=0)
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)
    lora_target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )

    @model_validator(mode="after")
    def _check(self) -> FinetuneSpec:
        if self.batch_size % self.micro_batch_size:
            raise SpecError(
                f"micro_batch_size {self.micro_batch_size} must divide batch_size {self.batch_size}",
                param="finetune.micro_batch_size",
            )
        if self.packing and self.format != "text":
            raise SpecError("packing is only for format 'text'", param="finetune.packing")
        if not self.lora_target_modules:
            raise SpecError("lora_target_modules must not be empty", param="finetune.lora_target_modules")
        return self

    @property
    def accumulation_steps(self) -> int:
        return self.batch_size // self.micro_batch_size


class PerplexitySpec(_Strict):
    dataset: str = DEFAULT_PERPLEXITY_DATASET
    seq_len: int = Field(128, ge=2, le=1_048_576)
    # Cap on windows scored; None scores the whole text.
    max_windows: int | None = Field(None, ge=1)


class EvaluateSpec(_Strict):
    perplexity: PerplexitySpec | None = None
    tasks: list[TaskName] = Field(default_factory=list)
    limit: int | None = Field(None, ge=1)
    batch_size: int = Field(16, ge=1, le=4096)
    # Evaluate the input model too, under the same settings, to report deltas.
    compare_base: bool = True

    @field_validator("tasks")
    @classmethod
    def _unique_tasks(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("tasks has duplicates")
        return v

    @model_validator(mode="after")
    def _something(self) -> EvaluateSpec:
        if self.perplexity is None and not self.tasks:
            raise SpecError("evaluate needs 'perplexity' and/or 'tasks'", param="evaluate")
        return self


class WebhookSpec(_Strict):
    url: str = Field(..., min_length=1, max_length=2048)
    secret: str | None = Field(None, max_length=512)

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not (v.startswith("http://") or v.startswith("https://")):
            raise ValueError("webhook url must be http:// or https://")
        return v


class JobSpec(_Strict):
    """A whole job: a base model and at least one stage (prune → finetune → evaluate)."""

    model: str = Field(BUNDLED_MODEL, min_length=1, max_length=1024)
    revision: str | None = Field(None, max_length=256)
    prune: PruneSpec | None = None
    finetune: FinetuneSpec | None = None
    evaluate: EvaluateSpec | None = None
    webhook: WebhookSpec | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    priority: int = Field(0, ge=-100, le=100)

    @model_validator(mode="after")
    def _has_stage(self) -> JobSpec:
        if self.prune is None and self.finetune is None and self.evaluate is None:
            raise SpecError("a job needs at least one of prune, finetune, evaluate", param="prune")
        if self.prune and self.prune.heal_between_rounds and not self.finetune:
            raise SpecError("heal_between_rounds needs a finetune stage", param="prune.heal_between_rounds")
        if len(self.metadata) > 64:
            raise SpecError("metadata holds at most 64 keys", param="metadata")
        return self

    @property
    def needs_gpu(self) -> bool:
        """Whether the job belongs on the ``gpu`` queue (anything beyond copy-and-rename work)."""
        if self.finetune is not None and self.finetune.method != "none":
            return True
        if self.prune is not None and self.prune.metric in ("taylor", "ppl", "block_influence", "angular"):
            return True
        if self.evaluate is not None and (self.evaluate.limit is None or self.evaluate.limit > 200):
            return True
        return False


def resolve_layer_count(prune: PruneSpec, num_layers: int) -> int:
    """How many layers ``prune`` removes from a model of ``num_layers`` layers (``k``).

    ``ratio`` → ``floor(ratio × L)`` (26 × 0.25 → 6). Raises SpecError naming the field when the
    request cannot be met on this model.
    """
    L = num_layers
    if L < 2:
        raise SpecError(f"the model has {L} layer(s); nothing can be removed", param="model")
    for i in prune.protect_layers:
        if i >= L:
            raise SpecError(f"protect_layers index {i} is out of range [0, {L})", param="prune.protect_layers")
    if prune.layers is not None:
        for i in prune.layers:
            if i >= L:
                raise SpecError(f"layer index {i} is out of range [0, {L})", param="prune.layers")
        k = len(prune.layers)
        param = "prune.layers"
    elif prune.num_layers is not None:
        k = prune.num_layers
        param = "prune.num_layers"
    else:
        assert prune.ratio is not None
        k = math.floor(prune.ratio * L + 1e-9)
        param = "prune.ratio"
        if k < 1:
            raise SpecError(f"ratio {prune.ratio} of {L} layers removes no layer", param=param)
    if k >= L:
        raise SpecError(f"cannot remove {k} of {L} layers (at least one must remain)", param=param)
    if k > L - len(prune.protect_layers):
        raise SpecError(
            f"removing {k} layers is impossible with {len(prune.protect_layers)} of {L} protected",
            param="prune.protect_layers",
        )
    return k
