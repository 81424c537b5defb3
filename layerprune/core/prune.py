"""Prune a model directory: choose layers with a metric, remove them, write the result.

One loop serves every metric and both one-shot and iterative pruning (⌈k/step⌉ rounds of
score → choose ``step`` layers → remove → optionally heal), in small steps over explicit state:
the layer plan (core/layer_plan.py: k, step, rounds, checked before anything is loaded), the
:class:`Renumbering` (which original layer each current and on-disk layer is) and :class:`_Pruning`
(what the run has recorded). The output is always written by
:func:`~layerprune.core.streaming.stream_prune` from the last directory on disk (the input, or
the previous round's healed model), so its tensors keep their dtype and bytes exactly; a model
is loaded into memory only when the metric's registry record says it scores with one
(core/scoring/registry.py), and then only to score.
With ``replace`` "linear" (core/replace) each write first fits a map per removed run on the
directory's full model (the scoring model when it is still whole), then streams and folds.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from layerprune.core.architecture import count_params, meta_model, num_layers_of
from layerprune.core.device import pick_device, pick_dtype
from layerprune.core.errors import DatasetError
from layerprune.core.hooks import NO_HOOKS, Hooks
from layerprune.core.layer_plan import LayerPlan, check_layer_plan
from layerprune.core.loading import load_model, load_tokenizer
from layerprune.core.removal import remove_layers
from layerprune.core.replace.plan import runs_of
from layerprune.core.replace.write import check_foldable, replace_and_write
from layerprune.core.scoring import (
    calibration_batches,
    choose_layers,
    magnitude_scores_from_files,
    score_layers,
)
from layerprune.core.scoring.cache import LAYER_SCORES, ResultCache, cache_key
from layerprune.core.scoring.registry import metric_info
from layerprune.core.sources import check_model_dir
from layerprune.core.spec import PruneSpec
from layerprune.core.streaming import stream_prune

HealRound = Callable[[Path, int], Path]
"""heal_round(pruned_dir, round_index) -> directory of the healed model (``pruned_dir`` itself when
healed in place)."""


@dataclass
class PruneResult:
    removed_layers: list[int]  # original numbering, sorted
    layer_scores: list[float | None]  # per original layer (angular: the block starting there)
    metric: str
    semantics: str
    rounds: list[dict[str, Any]]
    num_layers_before: int
    num_layers_after: int
    params_before: int
    params_after: int
    calibration: dict[str, Any] | None
    timings: dict[str, float] = field(default_factory=dict)
    streamed: bool = True  # True when no model was loaded into memory at all
    # prune.replace "linear": the maps' settings and fit per run (docs/methods.md §6.1); None otherwise.
    replacement: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibration_provenance(ids: torch.Tensor, spec: PruneSpec) -> dict[str, Any]:
    """What the scores were computed on, enough to recompute them (sha256 of the token ids)."""
    data = ids.detach().to("cpu", torch.int64).contiguous().numpy().tobytes()
    cal = spec.calibration
    return {"dataset": cal.dataset, "num_samples": int(ids.shape[0]), "seq_len": int(ids.shape[1]),
            "seed": cal.seed, "batch_size": cal.batch_size, "sha256": hashlib.sha256(data).hexdigest()}


class _Scorer:
    """Scores of the current layers, from files (no model) or from a model loaded to score."""

    def __init__(self, spec: PruneSpec, device: Any, hooks: Hooks, timings: dict[str, float]) -> None:
        self.spec = spec
        self.info = metric_info(spec.metric)
        self.device = device
        self.hooks = hooks
        self.timings = timings
        self.model: Any = None
        self.calibration: torch.Tensor | None = None
        self.file_scores: list[float] | None = None  # per layer of the directory they were read from
        self.model_dir: Path | None = None  # where ``model`` was loaded from
        self.pending_dir: Path | None = None  # where ``model`` will be loaded from on first use
        self.intact = False  # ``model`` still has every layer of ``model_dir``

    def load(self, model_dir: Path) -> None:
        """(Re)read whatever scoring needs from ``model_dir`` (the input or a healed round)."""
        metric = self.spec.metric
        t0 = time.monotonic()
        if self.info.scores_from_files:
            p = 1 if metric == "magnitude_l1" else 2
            self.file_scores = magnitude_scores_from_files(model_dir, p, self.spec.semantics)
            self.timings["score"] = self.timings.get("score", 0.0) + time.monotonic() - t0
            return
        if not self.info.needs_model:
            return
        # Loaded on first use: scores found in a cache need no model at all.
        self.release()  # drop the previous round's model before loading the next
        self.pending_dir = model_dir

    def _ensure_model(self) -> None:
        if self.pending_dir is None:
            return
        t0 = time.monotonic()
        model_dir, self.pending_dir = self.pending_dir, None
        self.model, tokenizer = load_model(model_dir, device=self.device)
        self.model_dir, self.intact = model_dir, True
        self.timings["load"] = self.timings.get("load", 0.0) + time.monotonic() - t0
        self._calibrate(tokenizer)

    def calibrate_only(self, model_dir: Path) -> None:
        """The calibration ids alone (tokenizer, no model): their provenance when the scores were cached."""
        if self.calibration is None and self.info.needs_calibration:
            self._calibrate(load_tokenizer(model_dir))

    def _calibrate(self, tokenizer: Any) -> None:
        user = f"metric '{self.spec.metric}'" if self.info.needs_calibration else "replace 'linear'"
        if self.calibration is None:
            if tokenizer is None:
                raise DatasetError(f"{user} needs a tokenizer for its calibration data; "
                                   "the model directory has none", param="prune.calibration")
            t1 = time.monotonic()
            self.calibration = calibration_batches(tokenizer, self.spec.calibration)
            self.timings["calibration"] = time.monotonic() - t1

    def full_model(self, model_dir: Path) -> Any:
        """``model_dir``'s model with all its layers (the scoring model when it is that one), and the
        calibration data, for fitting replacement maps."""
        if self.pending_dir == model_dir:
            self._ensure_model()
        if self.model is None or not self.intact or self.model_dir != model_dir:
            self.release()
            t0 = time.monotonic()
            self.model, tokenizer = load_model(model_dir, device=self.device)
            self.model_dir, self.intact = model_dir, True
            self.timings["load"] = self.timings.get("load", 0.0) + time.monotonic() - t0
            self._calibrate(tokenizer)
        return self.model

    def scores(self, on_disk_index: list[int], block_size: int) -> list[float | None]:
        """One score per current layer (angular: per block start); ``on_disk_index[j]`` = layer j's
        index in the directory that ``load`` read (magnitude scores are per layer and do not change
        when other layers go)."""
        metric = self.spec.metric
        if not self.info.has_scores:
            return [None] * len(on_disk_index)
        if self.file_scores is not None:
            return [self.file_scores[i] for i in on_disk_index]
        self._ensure_model()
        t0 = time.monotonic()
        out = score_layers(self.model, metric, calibration=self.calibration, semantics=self.spec.semantics,
                           hooks=self.hooks, block_size=block_size, batch_size=self.spec.calibration.batch_size)
        self.timings["score"] = self.timings.get("score", 0.0) + time.monotonic() - t0
        return out

    def release(self) -> None:
        """Free the scoring model (before healing loads its own copy, and at the end)."""
        self.model = None
        self.pending_dir = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def drop(self, current: list[int]) -> None:
        """Remove layers (current numbering) from the model in memory, for the next round's scores."""
        self._ensure_model()  # the first round's scores may have come from a cache
        if self.model is not None:
            remove_layers(self.model, current)
            self.intact = False


class Renumbering:
    """Which original layer each layer is, as layers go: the plan's one record of numbering.

    Three numberings meet here. *Current*: the layers still in the model being scored (what
    ``choose_layers`` indexes). *On disk*: the layers of the directory the next write reads (the
    input, or the last healed round), which still holds layers removed since it was written.
    *Original*: the input model's numbering, which every result reports.
    """

    def __init__(self, num_layers: int) -> None:
        self.current: list[int] = list(range(num_layers))  # current layer j -> original index
        self.on_disk: list[int] = list(range(num_layers))  # layer i of the directory on disk -> original
        self.removed: list[int] = []  # original indices chosen so far, in the order chosen

    def disk_positions(self) -> list[int]:
        """Each current layer's index in the directory on disk (file scores are read there)."""
        position = {o: i for i, o in enumerate(self.on_disk)}
        return [position[o] for o in self.current]

    def to_current(self, original: list[int]) -> list[int]:
        """Original indices → current ones (each must still be in the model)."""
        return sorted(self.current.index(o) for o in original)

    def current_protected(self, protect: list[int]) -> set[int]:
        wanted = set(protect)
        return {j for j, o in enumerate(self.current) if o in wanted}

    def remove(self, chosen: list[int]) -> list[int]:
        """Drop current layers ``chosen``; returns them in the original numbering, sorted."""
        gone = set(chosen)
        removed = sorted(self.current[j] for j in gone)
        self.removed.extend(removed)
        self.current = [o for j, o in enumerate(self.current) if j not in gone]
        return removed

    def pending_on_disk(self) -> list[int]:
        """Indices in the directory on disk of the layers removed but still written there."""
        gone = set(self.removed)
        return [i for i, o in enumerate(self.on_disk) if o in gone]

    def written(self) -> None:
        """The pending removals are now on disk (a round's model was written and healed)."""
        gone = set(self.removed)
        self.on_disk = [o for o in self.on_disk if o not in gone]


class _Pruning:
    """One call of :func:`prune_model`: its inputs, the renumbering and what it has recorded."""

    def __init__(self, spec: PruneSpec, plan: LayerPlan, hooks: Hooks, device: Any,
                 heal_round: HealRound | None, cache: ResultCache | None = None, model_id: str | None = None,
                 source_dir: Path | None = None) -> None:
        self.spec, self.plan, self.hooks = spec, plan, hooks
        self.info = metric_info(spec.metric)
        self.timings: dict[str, float] = {}
        self.scorer = _Scorer(spec, device, hooks, self.timings)
        self.numbering = Renumbering(plan.num_layers)
        self.layer_scores: list[float | None] = [None] * plan.num_layers
        self.rounds: list[dict[str, Any]] = []
        self.replaced: list[dict[str, Any]] = []  # replace 'linear': one report per write
        self.heal_round = heal_round if spec.heal_between_rounds and plan.rounds > 1 else None
        # Scores of the input model shared between jobs (core.scoring.cache): the first round only.
        self.cache = cache if model_id is not None and self.info.has_scores else None
        self.model_id, self.source_dir = model_id, source_dir

    def choose(self, round_index: int) -> None:
        """Score the current layers, choose this round's, record them and drop them from the numbering."""
        spec, numbering = self.spec, self.numbering
        n = min(self.plan.step, self.plan.removed - len(numbering.removed))
        if round_index == 0 and self.cache is not None:
            assert self.model_id is not None and self.source_dir is not None
            scores = _cached_first_scores(self.scorer, self.source_dir, n, self.cache, self.model_id)
        else:
            scores = self.scorer.scores(numbering.disk_positions(), block_size=n)
        if spec.metric == "manual":
            assert spec.layers is not None
            chosen = numbering.to_current(spec.layers)
        else:
            chosen = choose_layers(spec.metric, scores, n, len(numbering.current),
                                   protect=numbering.current_protected(spec.protect_layers),
                                   seed=spec.seed + round_index, block_size=n)
        layers = list(numbering.current)
        if round_index == 0:  # the first round scores the whole model: scores by original index
            for j, score in enumerate(scores):
                self.layer_scores[layers[j]] = None if score is None else float(score)
        removed = numbering.remove(chosen)
        self.rounds.append({"round": round_index, "num_layers": len(layers), "layers": layers,
                            "scores": [None if s is None else float(s) for s in scores],
                            "removed": removed, "removed_current": list(chosen)})

    def write(self, src: Path, dst: Path, round_index: int) -> dict[str, Any]:
        """Write ``src`` without the pending removals to ``dst``; the stream's summary."""
        removed_idx = self.numbering.pending_on_disk()
        shutil.rmtree(dst, ignore_errors=True)
        # Plain removal streams tensor bytes; replace "linear" fits its maps on src's model first.
        if self.spec.replacement is None:
            summary = stream_prune(src, dst, removed_idx, self.hooks)
        else:
            summary = _write_replaced(self.scorer, src, dst, removed_idx, list(self.numbering.on_disk),
                                      round_index, self.replaced)
        self.numbering.written()
        return summary

    def heal(self, current_dir: Path, rounds_dir: Path, round_index: int) -> Path:
        """Write this round's model, heal it, and load the healed one for the next round's scores."""
        assert self.heal_round is not None
        round_dir = rounds_dir / f"round_{round_index}"
        self.write(current_dir, round_dir, round_index)
        self.scorer.release()
        t0 = time.monotonic()
        self.hooks.info(f"healing after round {round_index + 1}", round=round_index,
                        removed=self.rounds[-1]["removed"])
        healed = Path(self.heal_round(round_dir, round_index))
        self.timings["heal"] = self.timings.get("heal", 0.0) + time.monotonic() - t0
        self.scorer.load(healed)
        return healed


def prune_model(source_dir: Path, spec: PruneSpec, out_dir: Path, hooks: Hooks = NO_HOOKS, *,
                heal_round: HealRound | None = None, device: Any = None, cache: ResultCache | None = None,
                model_id: str | None = None) -> PruneResult:
    """Remove ``check_layer_plan(spec, L).removed`` decoder layers of the model in ``source_dir``.

    Writes a Hugging Face directory to ``out_dir`` and returns what was removed (original
    numbering) and why. With ``spec.iterative_step`` the layers go in ⌈k/step⌉ rounds, each
    re-scoring the smaller model; with ``spec.heal_between_rounds`` and ``heal_round`` given,
    each round's model is healed before the next is scored (not after the last: the job's
    finetune stage does that). ``protect_layers`` are never removed.

    With a ``cache`` and the input's ``model_id`` (core.scoring.cache.model_identity), the first
    round's scores of the input model come from the cache when another job computed them (an
    info event says which: ``data.outcome`` "computed" or "hit").
    """
    t_start = time.monotonic()
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    if out_dir.resolve() == source_dir.resolve():
        raise ValueError(f"prune_model: the output directory must differ from the input ({source_dir})")
    config = check_model_dir(source_dir)
    plan = check_layer_plan(spec, num_layers_of(config))
    params_before = count_params(meta_model(config))
    run = _Pruning(spec, plan, hooks, device, heal_round, cache, model_id, source_dir)
    rounds_dir = out_dir.with_name(out_dir.name + "_rounds")
    current_dir = source_dir
    try:
        run.scorer.load(source_dir)
        if spec.replacement is not None and run.info.needs_model:
            run.scorer.full_model(source_dir)
            _check_foldable(run.scorer)  # refuse an unfoldable family before scoring, not after
        for r in range(plan.rounds):
            hooks.check()
            hooks.progress(r, plan.rounds, f"round {r + 1}/{plan.rounds}: scoring "
                                           f"{len(run.numbering.current)} layers with {spec.metric}")
            t_round = time.monotonic()
            run.choose(r)
            last = r == plan.rounds - 1
            if run.heal_round is not None and not last:
                current_dir = run.heal(current_dir, rounds_dir, r)
            elif not last:
                run.scorer.drop(run.rounds[-1]["removed_current"])
            run.rounds[-1]["seconds"] = time.monotonic() - t_round
        hooks.check()
        t_write = time.monotonic()
        summary = run.write(current_dir, out_dir, plan.rounds - 1)
        run.timings["write"] = time.monotonic() - t_write
    finally:
        run.scorer.release()
        shutil.rmtree(rounds_dir, ignore_errors=True)
    hooks.progress(plan.rounds, plan.rounds, f"removed {plan.removed} of {plan.num_layers} layers")
    run.timings["total"] = time.monotonic() - t_start
    calibration = run.scorer.calibration
    return PruneResult(
        removed_layers=sorted(run.numbering.removed),
        layer_scores=run.layer_scores,
        metric=spec.metric,
        semantics=spec.semantics,
        rounds=run.rounds,
        num_layers_before=plan.num_layers,
        num_layers_after=plan.remaining,
        params_before=params_before,
        params_after=int(summary["params_after"]),
        calibration=calibration_provenance(calibration, spec) if calibration is not None else None,
        timings=run.timings,
        streamed=not run.info.needs_model and spec.replacement is None,
        replacement=_merge_replacements(run.replaced),
    )


def scores_cache_key(spec: PruneSpec, model_id: str, block_size: int, device: Any) -> dict[str, Any]:
    """Everything the first round's scores of the input depend on (core.scoring.cache)."""
    metric = spec.metric
    key: dict[str, Any] = {"model": model_id, "metric": metric, "semantics": spec.semantics}
    if metric_info(metric).needs_model:
        # The forward passes' device and dtype change the figures (bf16 on a GPU, fp32 on a CPU).
        dev = pick_device() if device is None else torch.device(device)
        key.update(calibration=spec.calibration.model_dump(mode="json"), device=dev.type,
                   dtype=str(pick_dtype(dev)))
    if metric == "angular":
        key["block_size"] = block_size  # angular scores blocks of the size being removed
    return key


def _cached_first_scores(scorer: _Scorer, source_dir: Path, block_size: int, cache: ResultCache,
                         model_id: str) -> list[float | None]:
    hooks, metric = scorer.hooks, scorer.spec.metric
    key = scores_cache_key(scorer.spec, model_id, block_size, scorer.device)
    n = len(scorer.file_scores) if scorer.file_scores is not None else num_layers_of(check_model_dir(source_dir))

    def compute() -> list[float | None]:
        return [None if s is None else float(s) for s in scorer.scores(list(range(n)), block_size=block_size)]

    scores, hit = cache.get_or_compute(LAYER_SCORES, key, compute, check=hooks.check)
    data = {"cache": LAYER_SCORES, "outcome": "hit" if hit else "computed", "metric": metric,
            "key": cache_key(LAYER_SCORES, key)[:16]}
    if hit:
        scorer.calibrate_only(source_dir)  # what the scores were computed on, for the result's provenance
        hooks.info(f"layer scores of {metric} reused (computed by an earlier job on the same model and data)",
                   **data)
    else:
        hooks.info(f"scored {n} layers with {metric}; kept for later jobs on the same model and data", **data)
    return list(scores)


def _check_foldable(scorer: _Scorer) -> None:
    assert scorer.calibration is not None
    check_foldable(scorer.model, scorer.calibration)


def _write_replaced(scorer: _Scorer, src: Path, dst: Path, removed_idx: list[int], original: list[int],
                    round_index: int, replaced: list[dict[str, Any]]) -> dict[str, Any]:
    """Remove ``removed_idx`` from ``src`` into ``dst`` with each run replaced by a linear map."""
    spec, t0 = scorer.spec, time.monotonic()
    runs_of(removed_idx)  # a run at layer 0 is refused before a model is loaded for it
    model = scorer.full_model(src)
    assert spec.replacement is not None and scorer.calibration is not None
    summary, report = replace_and_write(src, dst, removed_idx, spec.replacement, model, scorer.calibration,
                                        original=original, batch_size=spec.calibration.batch_size,
                                        hooks=scorer.hooks)
    for run in report["runs"]:
        run["round"] = round_index
    replaced.append(report)
    scorer.timings["replace"] = scorer.timings.get("replace", 0.0) + time.monotonic() - t0
    return summary


def _merge_replacements(reports: list[dict[str, Any]]) -> dict[str, Any] | None:
    # One report per write (healed rounds write more than once); the runs of all of them, in order.
    if not reports:
        return None
    merged = {k: v for k, v in reports[-1].items() if k not in ("runs", "seconds")}
    merged["runs"] = [run for report in reports for run in report["runs"]]
    merged["seconds"] = {k: sum(r["seconds"][k] for r in reports) for k in reports[-1]["seconds"]}
    return merged
