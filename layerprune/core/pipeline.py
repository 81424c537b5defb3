"""One job's stages, in order: prune → finetune → evaluate → export.

Pure core: no database, no broker. Whoever runs a job (the worker, the CLI, a test) gives a
resolved model source, a work directory and :class:`Hooks`. Everything a stage produces lives in
``work_dir``:

- ``prune/``, ``finetune/`` (and ``finetune_work/`` checkpoints): the stage outputs;
- ``stage_<name>.json``: written atomically when a stage ends. A retried job skips every stage
  whose marker exists and fine-tuning resumes from its last checkpoint in ``finetune_work/``;
- ``output/``: what gets published. For a job that changes the model: the final Hugging Face
  directory with ``README.md`` (model card) and ``layerprune.json``. An evaluate-only job does not
  copy the unchanged model: its output is only ``metrics.json`` (and ``layerprune.json``).

When ``evaluate`` is present with ``compare_base`` and the job changed the model, the input model
is evaluated too, under the same settings, and the deltas are reported (``compare_results``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig

from layerprune.core.architecture import count_params, meta_model, num_layers_of
from layerprune.core.device import pick_device, pick_dtype
from layerprune.core.evaluate import compare_results, evaluate_model, weights_size_bytes
from layerprune.core.evaluate.speed import measure_model_dirs
from layerprune.core.export import write_model_card_and_record
from layerprune.core.finetune import check_finetune_spec, finetune_model
from layerprune.core.finetune.distill import check_teacher_fits, weights_bytes_as
from layerprune.core.hooks import Hooks
from layerprune.core.layer_plan import check_layer_plan
from layerprune.core.progress import evaluate_stage_parts, within
from layerprune.core.prune import prune_model
from layerprune.core.scoring.cache import BASE_EVALUATION, ResultCache, cache_key, model_identity
from layerprune.core.spec import JobSpec

STAGES = ("prune", "finetune", "evaluate", "export")
OUTPUT_DIR = "output"


@dataclass
class PipelineResult:
    """The job's ``result`` (the worker adds ``artifacts``)."""

    removed_layers: list[int] = field(default_factory=list)
    layer_scores: list[float] | None = None
    num_layers_before: int = 0
    num_layers_after: int = 0
    params_before: int = 0
    params_after: int = 0
    size_bytes_before: int = 0  # the weight files on disk, as core.evaluate.weights_size_bytes counts them
    size_bytes_after: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)  # {"before", "after", "deltas"}
    prune: dict[str, Any] | None = None
    finetune: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage run in this attempt
    output_kind: str = "model"  # "model" (a HF directory) or "metrics" (evaluate-only)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stages_of(spec: JobSpec) -> list[str]:
    """The stages this spec runs, in order (export always ends a job)."""
    out = []
    if spec.prune is not None:
        out.append("prune")
    if spec.finetune is not None and spec.finetune.method != "none":
        out.append("finetune")
    if spec.evaluate is not None:
        out.append("evaluate")
    out.append("export")
    return out


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file beside ``path``, fsync, then rename over it."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _marker(work_dir: Path, stage: str) -> Path:
    return work_dir / f"stage_{stage}.json"


def _done(work_dir: Path, stage: str) -> dict[str, Any] | None:
    path = _marker(work_dir, stage)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None  # a torn marker cannot happen (atomic rename) but must not crash a retry


def model_size_bytes(model_dir: Path) -> int:
    """Bytes of a saved model's weight files (the evaluation reports the same figure)."""
    return weights_size_bytes(model_dir)


def model_shape(model_dir: Path) -> tuple[int, int]:
    """(decoder layers, parameters) of a saved model, from its config alone (nothing loaded)."""
    config = AutoConfig.from_pretrained(model_dir)
    return num_layers_of(config), count_params(meta_model(config))


def _copy_model_dir(src: Path, dst: Path) -> None:
    """Copy a finished model directory to ``dst`` (hard links where possible: outputs are immutable)."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)

    def link_or_copy(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, tmp, copy_function=link_or_copy)
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)


def run_pipeline(
    spec: JobSpec,
    source: Any,
    work_dir: Path,
    hooks: Hooks,
    *,
    dataset_paths: dict[str, Path] | None = None,
    on_stage: Callable[[str], None] | None = None,
    cache: ResultCache | None = None,
) -> dict[str, Any]:
    """Run ``spec``'s stages on ``source`` (a ModelSource: ``.local_dir``) and return the job result.

    Stages already finished in ``work_dir`` (an earlier attempt) are skipped; their saved outputs
    are reused. Raises core's typed errors (LayerPruneError) or Cancelled. With a ``cache``
    (core.scoring.cache), the input model's layer scores and its evaluation are shared with
    other jobs on the same model content and settings.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    # Uploaded-file refs ("file_…") become the local paths the caller resolved.
    spec = spec.with_datasets({ref: str(path) for ref, path in (dataset_paths or {}).items()})
    base_dir = Path(source.local_dir)
    stages = stages_of(spec)
    result = PipelineResult()
    result.num_layers_before, result.params_before = model_shape(base_dir)
    result.num_layers_after, result.params_after = result.num_layers_before, result.params_before
    result.size_bytes_before = result.size_bytes_after = model_size_bytes(base_dir)
    model_id = _model_id(source) if cache is not None else None
    _check_finetune_early(spec, result.num_layers_before, base_dir)

    def begin(stage: str) -> float:
        hooks.check()
        if on_stage is not None:
            on_stage(stage)
        return time.monotonic()

    def run_stage(stage: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        # A stage whose marker exists finished in an earlier attempt: reuse its saved output.
        saved = _done(work_dir, stage)
        if saved is None:
            t0 = begin(stage)
            saved = run()
            saved["seconds"] = time.monotonic() - t0
            write_json_atomic(_marker(work_dir, stage), saved)
            result.timings[stage] = saved["seconds"]
        return saved

    current = base_dir
    if "prune" in stages:
        saved = run_stage("prune", lambda: _run_prune(spec, base_dir, work_dir, hooks, cache, model_id))
        result.prune = saved
        result.removed_layers = list(saved.get("removed_layers", []))
        result.layer_scores = saved.get("layer_scores")
        current = work_dir / "prune"

    if "finetune" in stages:
        source_dir = current
        saved = run_stage("finetune", lambda: _run_finetune(spec, source_dir, base_dir, work_dir, hooks))
        result.finetune = saved
        current = work_dir / "finetune"

    changed = current != base_dir
    if changed:
        result.num_layers_after, result.params_after = model_shape(current)
        result.size_bytes_after = model_size_bytes(current)

    if "evaluate" in stages:
        saved = _done(work_dir, "evaluate")
        if saved is None:
            t0 = begin("evaluate")
            saved = _run_evaluate(spec, base_dir, current, changed, work_dir, hooks, cache, model_id)
            saved["seconds"] = time.monotonic() - t0
            write_json_atomic(_marker(work_dir, "evaluate"), saved)
            result.timings["evaluate"] = saved["seconds"]
        result.metrics = {k: saved.get(k) for k in ("before", "after", "deltas")}

    saved = _done(work_dir, "export")
    if saved is None:
        t0 = begin("export")
        _export(spec, source, current, changed, work_dir, result)
        write_json_atomic(_marker(work_dir, "export"), {"seconds": time.monotonic() - t0})
        result.timings["export"] = time.monotonic() - t0
    result.output_kind = "model" if changed else "metrics"
    return result.to_dict()


def _check_finetune_early(spec: JobSpec, num_layers: int, base_dir: Path) -> None:
    """Refuse an impossible fine-tune before spending hours on pruning."""
    if spec.finetune is None or spec.finetune.method == "none":
        return
    after = num_layers
    if spec.prune is not None:
        after = check_layer_plan(spec.prune, num_layers).remaining
    check_finetune_spec(spec.finetune, after, cuda_available=torch.cuda.is_available())
    if spec.finetune.objective == "distill":
        device = pick_device()
        quantized = spec.finetune.method == "qlora"
        dtype = torch.bfloat16 if quantized else pick_dtype(device)
        teacher = weights_bytes_as(base_dir, dtype, quantized)
        # The student does not exist yet; after/num_layers of the teacher is a lower bound on its size
        # (embeddings are kept whole), so this refuses only what surely cannot fit.
        check_teacher_fits(teacher, teacher * after // num_layers, device,
                           "nf4" if quantized else str(dtype).removeprefix("torch."))


def _model_id(source: Any) -> str | None:
    files = getattr(source, "files", None)
    return model_identity(files) if files else None


def _run_prune(spec: JobSpec, model_dir: Path, work_dir: Path, hooks: Hooks, cache: ResultCache | None = None,
               model_id: str | None = None) -> dict[str, Any]:
    assert spec.prune is not None
    out_dir = work_dir / "prune"
    shutil.rmtree(out_dir, ignore_errors=True)  # a half-written output of a killed attempt
    heal_round = None
    if spec.prune.heal_between_rounds and spec.finetune is not None and spec.finetune.method != "none":
        heal_round = _heal_round_fn(spec, model_dir, work_dir, hooks)
    res = prune_model(model_dir, spec.prune, out_dir, hooks, heal_round=heal_round, cache=cache, model_id=model_id)
    return dict(res.to_dict())


def _heal_round_fn(spec: JobSpec, base_dir: Path, work_dir: Path, hooks: Hooks) -> Callable[..., Any]:
    """Healing between rounds of iterative pruning: the job's finetune spec on the round's model
    (distillation's teacher is the job's input model in every round)."""
    assert spec.finetune is not None

    def heal_round(pruned_dir: Path, round_index: int) -> Path:
        # Each round heals into its own folder (checkpoints beside it), so a retry resumes there.
        out = work_dir / f"heal_round_{round_index}"
        finetune_model(Path(pruned_dir), spec.finetune, out, work_dir / f"heal_round_{round_index}_work", hooks,
                       teacher_dir=base_dir)
        return out

    return heal_round


def _run_finetune(spec: JobSpec, model_dir: Path, base_dir: Path, work_dir: Path, hooks: Hooks) -> dict[str, Any]:
    assert spec.finetune is not None
    out_dir = work_dir / "finetune"
    # finetune_work/ keeps its checkpoints across attempts: training resumes from the last one.
    # Distillation's teacher is the input model, reloaded from its directory: the pruned student's
    # trunk is not the teacher's (pruning renumbers and drops layers), so no weights are shared.
    res = finetune_model(model_dir, spec.finetune, out_dir, work_dir / "finetune_work", hooks, teacher_dir=base_dir)
    return dict(res.to_dict())


def _base_evaluation(spec: JobSpec, base_dir: Path, hooks: Hooks, cache: ResultCache | None,
                     model_id: str | None) -> dict[str, Any]:
    """The input model's evaluation (no speed: that is measured beside the other model), shared
    through ``cache`` with every job that evaluates the same model content the same way."""
    assert spec.evaluate is not None
    if cache is None or model_id is None:
        return evaluate_model(base_dir, spec.evaluate, hooks, with_speed=False)
    device = pick_device()
    settings = spec.evaluate.model_dump(mode="json", exclude={"speed", "compare_base"})
    key = {"model": model_id, "evaluate": settings, "device": device.type, "dtype": str(pick_dtype(device))}
    value, hit = cache.get_or_compute(BASE_EVALUATION, key,
                                      lambda: evaluate_model(base_dir, spec.evaluate, hooks, with_speed=False),
                                      check=hooks.check)
    data = {"cache": BASE_EVALUATION, "outcome": "hit" if hit else "computed", "key": cache_key(BASE_EVALUATION, key)[:16]}
    if hit:
        hooks.info("the input model's evaluation reused (computed by an earlier job with the same settings)", **data)
    else:
        hooks.info("evaluated the input model; kept for later jobs with the same settings", **data)
    return dict(value)


def _run_evaluate(spec: JobSpec, base_dir: Path, model_dir: Path, changed: bool, work_dir: Path,
                  hooks: Hooks, cache: ResultCache | None = None, model_id: str | None = None) -> dict[str, Any]:
    assert spec.evaluate is not None
    # Each pass reports into its measured share of the stage, labelled (core.progress).
    parts = evaluate_stage_parts(spec.evaluate, changed and spec.evaluate.compare_base)
    before = None
    if changed and spec.evaluate.compare_base:
        # The base evaluation is its own resumable step: it can take as long as the second one.
        base_marker = work_dir / "evaluate_base.json"
        if base_marker.is_file():
            before = json.loads(base_marker.read_text(encoding="utf-8"))
        else:
            hooks.info("evaluating the input model for comparison")
            before = _base_evaluation(spec, base_dir, within(hooks, *parts["before"], part="before"), cache,
                                      model_id)
            write_json_atomic(base_marker, before)
    hooks.check()
    after_hooks = within(hooks, *parts["after"], part="after")
    # Unchanged (evaluate-only): the model is the input, whose evaluation other jobs may share.
    after = (evaluate_model(model_dir, spec.evaluate, after_hooks, with_speed=False) if changed
             else _base_evaluation(spec, base_dir, after_hooks, cache, model_id))
    if spec.evaluate.speed is not None:
        # Measured together, in this process with the same settings (interleaved on CPU: speed.py).
        hooks.info("measuring prefill and decode speed")
        dirs = [base_dir, model_dir] if before is not None else [model_dir]
        figures = measure_model_dirs(dirs, spec.evaluate.speed, within(hooks, *parts["speed"], part="speed"))
        if before is not None:
            before["speed"] = figures[0]
        after["speed"] = figures[-1]
    deltas = compare_results(before, after) if before is not None else None
    return {"before": before, "after": after, "deltas": deltas}


def _export(spec: JobSpec, source: Any, model_dir: Path, changed: bool, work_dir: Path,
            result: PipelineResult) -> None:
    out = work_dir / OUTPUT_DIR
    if changed:
        _copy_model_dir(model_dir, out)
    else:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        write_json_atomic(out / "metrics.json", result.metrics)
    record = {
        "spec": spec.model_dump(mode="json"),
        "base_model": _source_info(source),
        "prune": result.prune,
        "finetune": result.finetune,
        "metrics": result.metrics,
        "num_layers_before": result.num_layers_before,
        "num_layers_after": result.num_layers_after,
        "params_before": result.params_before,
        "params_after": result.params_after,
        "size_bytes_before": result.size_bytes_before,
        "size_bytes_after": result.size_bytes_after,
        "timings": result.timings,
        "license": (_source_info(source).get("license")),
        "output_kind": "model" if changed else "metrics",
    }
    if changed:
        write_model_card_and_record(out, record)
    else:
        write_json_atomic(out / "layerprune.json", record)


def _source_info(source: Any) -> dict[str, Any]:
    """The base model's provenance (ref, revision, kind, license, file hashes) as JSON."""
    if hasattr(source, "to_dict"):
        info = dict(source.to_dict())
        info.pop("local_dir", None)  # a path on the worker means nothing to the reader
        return info
    return {"ref": str(getattr(source, "ref", "")), "local_dir": None}
