"""The job spec: what a client asks for, with the paper's recipe as the defaults.

Torch-free on purpose: the API validates specs and publishes their JSON Schema without importing
torch. Structural problems (wrong type, value out of range) are pydantic errors whose ``loc`` is
the field's path; checks that need the model's layer count live in :func:`resolve_layer_count`
and core/layer_plan.py (which the API and the worker both call) and raise :class:`SpecError`
naming the field.

The spec is the model and the stages only: what a service keeps beside it (webhook, metadata,
priority, the queue) is the service's (api/schemas.py ``JobCreate``).

Defaults follow Lu et al. 2024 (docs/methods.md): reverse-order removal of 25% of layers, then
partial healing of lm_head + final norm + the last 3 remaining layers (AdamW, lr 1e-5, 2 epochs,
batch 64 = 4 x 16, 100 warm-up steps, cutoff 256, seed 42).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from layerprune.core import refs
from layerprune.core.bundled import INSTRUCTION_SETS, TEXT_ALIASES, TEXT_SETS
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
FinetuneObjective = Literal["lm", "distill"]
DataFormat = Literal["alpaca", "dolly", "text", "chat"]
TaskName = Literal[
    "arc_easy", "arc_challenge", "piqa", "hellaswag", "openbookqa", "winogrande", "boolq", "mmlu",
    "gsm8k", "gsm8k_cot", "lambada_openai", "triviaqa", "nq_open",
]
# The task names of the whole project: core/evaluate's task tables are checked against these.
TASKS: tuple[str, ...] = TaskName.__args__  # type: ignore[attr-defined]
GENERATIVE_TASKS: tuple[str, ...] = ("gsm8k", "gsm8k_cot", "lambada_openai", "triviaqa", "nq_open")
MULTIPLE_CHOICE_TASKS: tuple[str, ...] = tuple(t for t in TASKS if t not in GENERATIVE_TASKS)
if not set(GENERATIVE_TASKS) <= set(TASKS):  # pragma: no cover - a task added to one list only
    raise RuntimeError("GENERATIVE_TASKS names a task TaskName does not")

NonNegInt = Annotated[int, Field(ge=0)]


class StrictModel(BaseModel):
    """Base of every spec model (the service's request model builds on it too)."""

    # Unknown fields are errors: a typo in a spec must not silently fall back to a default.
    # Infinity and NaN are refused in every float field (JSON parsers accept them; no setting means them).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        # A NUL character cannot be stored (Postgres JSONB), named as a path, or meant: refuse it
        # in every string, also inside lists and dicts (metadata keys included). Integers must fit
        # in 64 bits: seeds and counts beyond that fail in the worker (torch, numpy), not here.
        problem = _unstorable(value)
        if problem is not None:
            raise PydanticCustomError(problem[0], problem[1])
        return value


def _unstorable(value: Any) -> tuple[str, str] | None:
    if isinstance(value, str):
        return ("nul_character", "must not contain a NUL character") if "\x00" in value else None
    if isinstance(value, int) and not isinstance(value, bool):
        return ("int_too_large", "must fit in a 64-bit integer") if not -2**63 <= value < 2**63 else None
    if isinstance(value, dict):
        items = [*value.keys(), *value.values()]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        return None
    for item in items:
        problem = _unstorable(item)
        if problem is not None:
            return problem
    return None


class CalibrationSpec(StrictModel):
    """Text the data-driven metrics (taylor, ppl, block_influence, angular) score on.

    The default is a calibration split of bundled Wikipedia paragraphs that is disjoint from
    every evaluation text (the paper's code calibrates PPL on WikiText-2 *test*; we do not).
    """

    dataset: str = DEFAULT_CALIBRATION_DATASET
    num_samples: int = Field(10, ge=1, le=100_000)
    seq_len: int = Field(128, ge=2, le=1_048_576)
    batch_size: int = Field(1, ge=1, le=4096)
    seed: int = 42


ReplaceMethod = Literal["none", "linear"]


class ReplaceSpec(StrictModel):
    """Replace each contiguous run of removed blocks by one linear map folded into the kept block
    before it (docs/methods.md §6). ``"linear"`` in a spec is short for ``{"method": "linear"}``."""

    method: ReplaceMethod = "none"
    # "lstsq": closed-form least squares on the calibration activations; "cosine": then a few hundred
    # Adam steps on the mean cosine distance, starting from the least-squares map (ReplaceMe).
    objective: Literal["lstsq", "cosine"] = "lstsq"
    # Ridge λ relative to the mean diagonal of MᵀM (λ = ridge · tr(MᵀM) / d); 0 = plain least squares.
    ridge: float = Field(1e-4, ge=0.0, le=1e3)
    steps: int = Field(300, ge=1, le=100_000)
    learning_rate: float = Field(1e-4, gt=0.0, le=1.0)
    # Tokens per accumulation chunk (lstsq) and per optimiser step (cosine): the memory bound.
    chunk_tokens: int = Field(1024, ge=1, le=1_048_576)

    @model_validator(mode="after")
    def _settings_need_a_method(self) -> ReplaceSpec:
        # {"objective": "cosine"} alone would silently replace nothing: say what is missing.
        # (Compared with the defaults, not "was it given": a stored spec is dumped with every field,
        # and the worker validates it again.)
        changed = [n for n in type(self).model_fields if n != "method"
                   and getattr(self, n) != type(self).model_fields[n].default]
        if self.method == "none" and changed:
            raise SpecError("replace settings are given but method is 'none'; set method 'linear'",
                            param="prune.replace.method")
        return self


REPLACE_METHODS: tuple[str, ...] = ReplaceMethod.__args__  # type: ignore[attr-defined]


def _replace_schema(schema: dict[str, Any]) -> None:
    # Published shape: the object, or its method alone as a string ("linear").
    obj = {"$ref": schema.pop("$ref")} if "$ref" in schema else schema.pop("allOf")[0]
    schema["anyOf"] = [obj, {"type": "string", "enum": list(REPLACE_METHODS)}]


class PruneSpec(StrictModel):
    """Which layers to remove and how to choose them (docs/methods.md §1)."""

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
    # Replace each removed run by a linear map (docs/methods.md §6.1): "none", "linear" or a ReplaceSpec.
    replace: ReplaceSpec = Field(default_factory=ReplaceSpec, json_schema_extra=_replace_schema)

    @field_validator("replace", mode="before")
    @classmethod
    def _replace_shorthand(cls, v: Any) -> Any:
        # A string is the method alone; validating it here keeps the error's path 'prune.replace'.
        if isinstance(v, str):
            if v not in REPLACE_METHODS:
                raise ValueError(f"replace must be one of {', '.join(map(repr, REPLACE_METHODS))} or an object")
            return {"method": v}
        return v

    @property
    def replacement(self) -> ReplaceSpec | None:
        """The replacement settings when removed runs are replaced by a linear map, else None."""
        return self.replace if self.replace.method != "none" else None

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
        if self.replacement is not None and self.layers is not None and 0 in self.layers:
            raise SpecError("replace 'linear' folds each removed run into the block before it; layer 0 has "
                            "none (keep layer 0 or use replace 'none')", param="prune.replace")
        return self


class FinetuneSpec(StrictModel):
    """Healing after pruning (docs/methods.md §3); the paper's values by default."""

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
    # "distill": learn from the job's input model (the teacher) as in Minitron (docs/methods.md §7):
    # alpha·tau²·KL(teacher ‖ student) + (1 − alpha)·CE + hidden_weight·(1 − cos) of the last
    # layer's output. top_k keeps the teacher's k largest logits (renormalised); None: all of them.
    objective: FinetuneObjective = "lm"
    distill_temperature: float = Field(1.0, gt=0, le=100)
    distill_alpha: float = Field(1.0, ge=0.0, le=1.0)
    distill_hidden_weight: float = Field(0.0, ge=0.0, le=1000)
    distill_top_k: int | None = Field(None, ge=1, le=1_048_576)

    @model_validator(mode="after")
    def _check(self) -> FinetuneSpec:
        _check_distill(self)
        if self.batch_size % self.micro_batch_size:
            raise SpecError(
                f"micro_batch_size {self.micro_batch_size} must divide batch_size {self.batch_size}",
                param="finetune.micro_batch_size",
            )
        _check_bundled_format(self)
        if self.packing and self.format != "text":
            raise SpecError("packing is only for format 'text'", param="finetune.packing")
        if not self.lora_target_modules:
            raise SpecError("lora_target_modules must not be empty", param="finetune.lora_target_modules")
        return self

    @property
    def accumulation_steps(self) -> int:
        return self.batch_size // self.micro_batch_size


def _bundled_name(ref: str) -> str:
    name = refs.bundled_name(ref)
    return TEXT_ALIASES.get(name, name)


def _check_bundled_format(spec: FinetuneSpec) -> None:
    """A bundled data set has one format: say so now rather than fail on its first row in the worker."""
    if not refs.is_bundled(spec.dataset):
        return
    name = _bundled_name(spec.dataset)
    if name in TEXT_SETS and spec.format != "text":
        raise SpecError(f"{spec.dataset} is plain text: use format 'text'", param="finetune.format")
    if name in INSTRUCTION_SETS and spec.format != "alpaca":
        raise SpecError(f"{spec.dataset} is Alpaca-format: use format 'alpaca'", param="finetune.format")


DISTILL_FIELDS = ("distill_temperature", "distill_alpha", "distill_hidden_weight", "distill_top_k")


def _check_distill(spec: FinetuneSpec) -> None:
    if spec.objective == "lm":
        # A distillation knob changed with the LM objective would silently do nothing: refuse it.
        # (Compared with the default, not "was it given": a dumped spec lists every field.)
        for name in DISTILL_FIELDS:
            if getattr(spec, name) != FinetuneSpec.model_fields[name].default:
                raise SpecError(f"{name} applies only with objective 'distill'", param=f"finetune.{name}")
        return
    if spec.method == "none":
        raise SpecError("objective 'distill' needs a method that trains (partial, lora, qlora or full)",
                        param="finetune.objective")
    if spec.distill_hidden_weight > 0 and spec.method == "partial" and spec.trainable_last_layers == 0:
        raise SpecError("distill_hidden_weight compares the last layer's output, which trainable_last_layers 0 "
                        "leaves frozen: train at least one layer or set it to 0",
                        param="finetune.distill_hidden_weight")


class PerplexitySpec(StrictModel):
    dataset: str = DEFAULT_PERPLEXITY_DATASET
    seq_len: int = Field(128, ge=2, le=1_048_576)
    # Cap on windows scored; None scores the whole text.
    max_windows: int | None = Field(None, ge=1)


class SpeedSpec(StrictModel):
    """Measured throughput: prefill and greedy decode tokens/s at each batch size, before and after.

    The defaults take seconds on a 135M model on CPU and are still meaningful on a GPU.
    """

    prompt_tokens: int = Field(128, ge=1, le=32_768)
    new_tokens: int = Field(32, ge=1, le=4096)
    batch_sizes: list[Annotated[int, Field(ge=1, le=1024)]] = Field(default_factory=lambda: [1, 8], min_length=1,
                                                                    max_length=8)
    repeats: int = Field(3, ge=1, le=50)
    warmup: int = Field(1, ge=0, le=10)

    @field_validator("batch_sizes")
    @classmethod
    def _unique_batches(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("batch_sizes has duplicates")
        return v


class SamplesSpec(StrictModel):
    """A few fixed prompts the model answers greedily, before and after (samples.py)."""

    prompts: list[Annotated[str, Field(min_length=1, max_length=4000)]] = Field(..., min_length=1, max_length=8)
    max_new_tokens: int = Field(48, ge=1, le=1024)
    # None: the tokenizer's chat template when it has one; true/false force it on/off.
    chat_template: bool | None = None


class EvaluateSpec(StrictModel):
    perplexity: PerplexitySpec | None = None
    tasks: list[TaskName] = Field(default_factory=list)
    limit: int | None = Field(None, ge=1)
    batch_size: int = Field(16, ge=1, le=4096)
    # Evaluate the input model too, under the same settings, to report deltas.
    compare_base: bool = True
    # Render prompts with the tokenizer's chat template (lm-eval's --apply_chat_template; few-shot
    # examples as separate turns, its default then). Generative and last-word tasks only.
    apply_chat_template: bool = False
    # The GSM8K train split stock 'gsm8k' draws its 5 examples from: an uploaded file id, a local
    # .jsonl/.json/.parquet path, or null for the hub copy openai/gsm8k (not bundled).
    gsm8k_train: str | None = Field(None, min_length=1, max_length=4096)
    # Prefill/decode tokens/s before and after (true: the defaults; false/absent: not measured).
    speed: SpeedSpec | None = None
    # Greedy answers to fixed prompts, before and after (a list of strings is short for {"prompts": [...]}).
    samples: SamplesSpec | None = None

    @field_validator("samples", mode="before")
    @classmethod
    def _samples_shorthand(cls, v: Any) -> Any:
        return {"prompts": v} if isinstance(v, list) else v

    @field_validator("speed", mode="before")
    @classmethod
    def _speed_switch(cls, v: Any) -> Any:
        if v is True:
            return {}
        return None if v is False else v

    @field_validator("tasks")
    @classmethod
    def _unique_tasks(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("tasks has duplicates")
        return v

    @model_validator(mode="after")
    def _something(self) -> EvaluateSpec:
        if self.perplexity is None and not self.tasks and self.speed is None and self.samples is None:
            raise SpecError("evaluate needs 'perplexity', 'tasks', 'speed' and/or 'samples'", param="evaluate")
        if self.apply_chat_template:
            for i, task in enumerate(self.tasks):
                if task not in GENERATIVE_TASKS:
                    raise SpecError(f"apply_chat_template is supported for {', '.join(GENERATIVE_TASKS)}, not "
                                    f"'{task}'; score it in a job without the chat template", param=f"evaluate.tasks[{i}]")
        if self.gsm8k_train is not None and "gsm8k" not in self.tasks:
            raise SpecError("gsm8k_train is only used by task 'gsm8k', which tasks does not name",
                            param="evaluate.gsm8k_train")
        return self


class JobSpec(StrictModel):
    """A whole job: a base model and at least one stage (prune → finetune → evaluate)."""

    model: str = Field(BUNDLED_MODEL, min_length=1, max_length=1024)
    revision: str | None = Field(None, max_length=256)
    prune: PruneSpec | None = None
    finetune: FinetuneSpec | None = None
    evaluate: EvaluateSpec | None = None

    @model_validator(mode="after")
    def _has_stage(self) -> JobSpec:
        if self.prune is None and self.finetune is None and self.evaluate is None:
            raise SpecError("a job needs at least one of prune, finetune, evaluate", param="prune")
        if self.prune and self.prune.heal_between_rounds and not self.finetune:
            raise SpecError("heal_between_rounds needs a finetune stage", param="prune.heal_between_rounds")
        if (self.finetune is not None and self.finetune.method != "none" and self.evaluate is not None
                and self.evaluate.perplexity is not None and refs.is_bundled(self.finetune.dataset)
                and _bundled_name(self.finetune.dataset) == _bundled_name(self.evaluate.perplexity.dataset)):
            # Healing on the very text perplexity is measured on would report a memorised score.
            raise SpecError(f"finetune.dataset {self.finetune.dataset} is the perplexity evaluation text; heal on "
                            "bundled:wikipedia-train (disjoint from it)", param="finetune.dataset")
        return self

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> JobSpec:
        """The spec of a stored job. The service stores its request body, which adds fields of its
        own (webhook, metadata, priority) beside the spec's: core takes its fields only."""
        return cls.model_validate({k: v for k, v in data.items() if k in cls.model_fields})

    def dataset_refs(self) -> dict[str, str]:
        """``{field path: reference}`` of every data set the spec names, in stage order: each may be
        bundled, an uploaded file (``file_…``), a local path or a hub id (core/refs.py)."""
        dumped = self.model_dump(include=_DATASET_ROOTS)
        out: dict[str, str] = {}
        for path in DATASET_FIELDS:
            value = field_at(dumped, path)
            if isinstance(value, str):
                out[path] = value
        return out

    def with_datasets(self, replace: Mapping[str, str]) -> JobSpec:
        """The spec with each data-set reference found in ``replace`` swapped for its value
        (the worker swaps uploaded-file ids for the files' local paths)."""
        swapped = {path: replace[ref] for path, ref in self.dataset_refs().items() if ref in replace}
        if not swapped:
            return self
        data = self.model_dump(mode="json")
        for path, value in swapped.items():
            *parents, leaf = path.split(".")
            node = data
            for part in parents:
                node = node[part]
            node[leaf] = value
        return type(self).model_validate(data)


# Every field that names a data set (an uploaded file, a bundled set, a path): the one list the
# database (files in use), the worker (files to resolve), the pipeline and the API read.
DATASET_FIELDS: tuple[str, ...] = ("prune.calibration.dataset", "finetune.dataset", "evaluate.perplexity.dataset",
                                   "evaluate.gsm8k_train")
_DATASET_ROOTS = frozenset(path.split(".")[0] for path in DATASET_FIELDS)


def field_at(data: Any, path: str) -> Any:
    """The value at dotted ``path`` of a dumped (or stored) spec, None where any part is missing."""
    node = data
    for part in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


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
