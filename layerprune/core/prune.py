"""Prune a model directory: choose layers with a metric, remove them, write the result.

One loop serves every metric and both one-shot and iterative pruning (⌈k/step⌉ rounds of
score → choose ``step`` layers → remove → optionally heal). The output is always written by
:func:`~layerprune.core.streaming.stream_prune` from the last directory on disk (the input, or
the previous round's healed model), so its tensors keep their dtype and bytes exactly; a model
is loaded into memory only when a metric needs a forward pass (taylor, ppl, block_influence,
angular), and then only to score.
With ``replace`` "linear" (core/replace) each write first fits a map per removed run on the
directory's full model (the scoring model when it is still whole), then streams and folds.

Two numberings are tracked: ``layers`` maps each current layer to its original index (what the
result reports), ``on_disk`` maps each layer of the current directory to its original index
(what the next stream_prune removes from).
"""

from __future__ import annotations

import hashlib
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from layerprune.core.architecture import count_params, meta_model, num_layers_of
from layerprune.core.errors import DatasetError
from layerprune.core.hooks import NO_HOOKS, Hooks
from layerprune.core.scoring.cache import ResultCache
from layerprune.core.sources import check_model_dir
from layerprune.core.spec import PruneSpec, resolve_layer_count

# Metrics whose choice needs no forward pass: position, seed, a list, or weights read from files.
ON_DISK_METRICS = frozenset({"reverse_order", "random", "manual", "magnitude_l1", "magnitude_l2"})
CALIBRATED_METRICS = frozenset({"taylor", "ppl", "block_influence", "angular"})
# Metrics whose scores are worth sharing between jobs (core.scoring.cache).
SCORED_METRICS = CALIBRATED_METRICS | {"magnitude_l1", "magnitude_l2"}

HealRound = Callable[[Path, int], Any]
"""heal_round(pruned_dir, round_index) -> directory of the healed model (a Path or str)."""


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


def _healed_dir(healed: Any, fallback: Path) -> Path:
    # Accept a directory or a result object that names one; None means "healed in place".
    if healed is None:
        return fallback
    if isinstance(healed, (str, Path)):
        return Path(healed)
    for attr in ("out_dir", "output_dir", "model_dir"):
        value = getattr(healed, attr, None)
        if value is not None:
            return Path(value)
    if isinstance(healed, dict):
        for key in ("out_dir", "output_dir", "model_dir"):
            if healed.get(key):
                return Path(healed[key])
    raise TypeError(f"heal_round returned {type(healed).__name__}; expected the healed model's directory")


class _Scorer:
    """Scores of the current layers, from files (no model) or from a model loaded to score."""

    def __init__(self, spec: PruneSpec, device: Any, hooks: Hooks, timings: dict[str, float]) -> None:
        self.spec = spec
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
        from layerprune.core.scoring import magnitude_scores_from_files

        metric = self.spec.metric
        t0 = time.monotonic()
        if metric in ("magnitude_l1", "magnitude_l2"):
            p = 1 if metric == "magnitude_l1" else 2
            self.file_scores = magnitude_scores_from_files(model_dir, p, self.spec.semantics)
            self.timings["score"] = self.timings.get("score", 0.0) + time.monotonic() - t0
            return
        if metric not in CALIBRATED_METRICS:
            return
        # Loaded on first use: scores found in a cache need no model at all.
        self.release()  # drop the previous round's model before loading the next
        self.pending_dir = model_dir

    def _ensure_model(self) -> None:
        if self.pending_dir is None:
            return
        from layerprune.core.loading import load_model

        t0 = time.monotonic()
        model_dir, self.pending_dir = self.pending_dir, None
        self.model, tokenizer = load_model(model_dir, device=self.device)
        self.model_dir, self.intact = model_dir, True
        self.timings["load"] = self.timings.get("load", 0.0) + time.monotonic() - t0
        self._calibrate(tokenizer)

    def calibrate_only(self, model_dir: Path) -> None:
        """The calibration ids alone (tokenizer, no model): their provenance when the scores were cached."""
        from layerprune.core.loading import load_tokenizer

        if self.calibration is None and self.spec.metric in CALIBRATED_METRICS:
            self._calibrate(load_tokenizer(model_dir))

    def _calibrate(self, tokenizer: Any) -> None:
        from layerprune.core.scoring import calibration_batches

        user = f"metric '{self.spec.metric}'" if self.spec.metric in CALIBRATED_METRICS else "replace 'linear'"
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
        from layerprune.core.loading import load_model

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
        from layerprune.core.scoring import score_layers

        metric = self.spec.metric
        if metric in ("reverse_order", "random", "manual"):
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
            from layerprune.core.removal import remove_layers

            remove_layers(self.model, current)
            self.intact = False


def prune_model(source_dir: Path, spec: PruneSpec, out_dir: Path, hooks: Hooks = NO_HOOKS, *,
                heal_round: HealRound | None = None, device: Any = None, cache: ResultCache | None = None,
                model_id: str | None = None) -> PruneResult:
    """Remove ``resolve_layer_count(spec, L)`` decoder layers of the model in ``source_dir``.

    Writes a Hugging Face directory to ``out_dir`` and returns what was removed (original
    numbering) and why. With ``spec.iterative_step`` the layers go in ⌈k/step⌉ rounds, each
    re-scoring the smaller model; with ``spec.heal_between_rounds`` and ``heal_round`` given,
    each round's model is healed before the next is scored (not after the last: the job's
    finetune stage does that). ``protect_layers`` are never removed.

    With a ``cache`` and the input's ``model_id`` (core.scoring.cache.model_identity), the first
    round's scores of the input model come from the cache when another job computed them (an
    info event says which: ``data.outcome`` "computed" or "hit").
    """
    from layerprune.core.scoring import choose_layers
    from layerprune.core.streaming import stream_prune

    t_start = time.monotonic()
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    if out_dir.resolve() == source_dir.resolve():
        raise ValueError(f"prune_model: the output directory must differ from the input ({source_dir})")
    config = check_model_dir(source_dir)
    num_layers = num_layers_of(config)
    k = resolve_layer_count(spec, num_layers)
    params_before = count_params(meta_model(config))
    metric = spec.metric
    # manual names its layers up front: there is nothing to re-score between rounds.
    step = k if metric == "manual" or not spec.iterative_step else min(spec.iterative_step, k)
    n_rounds = math.ceil(k / step)
    heal = bool(spec.heal_between_rounds and heal_round is not None and n_rounds > 1)
    protect = set(spec.protect_layers)
    timings: dict[str, float] = {}
    rounds_dir = out_dir.with_name(out_dir.name + "_rounds")

    scorer = _Scorer(spec, device, hooks, timings)
    scorer.load(source_dir)
    replaced: list[dict[str, Any]] = []

    def write(src: Path, dst: Path, removed_idx: list[int], round_index: int) -> dict[str, Any]:
        # Plain removal streams tensor bytes; replace "linear" fits its maps on src's model first.
        if spec.replacement is None:
            return stream_prune(src, dst, removed_idx, hooks)
        return _write_replaced(scorer, src, dst, removed_idx, list(on_disk), round_index, replaced)

    if spec.replacement is not None and metric in CALIBRATED_METRICS:
        scorer.full_model(source_dir)
        _check_foldable(scorer)  # refuse an unfoldable family before scoring, not after
    current_dir = source_dir
    layers = list(range(num_layers))  # current layer j -> original index
    on_disk = list(range(num_layers))  # layer of current_dir -> original index
    layer_scores: list[float | None] = [None] * num_layers
    rounds: list[dict[str, Any]] = []
    removed_total: list[int] = []
    summary: dict[str, Any] = {}
    try:
        for r in range(n_rounds):
            hooks.check()
            hooks.progress(r, n_rounds, f"round {r + 1}/{n_rounds}: scoring {len(layers)} layers with {metric}")
            t_round = time.monotonic()
            n = min(step, k - len(removed_total))
            disk_pos = {o: i for i, o in enumerate(on_disk)}
            if r == 0 and cache is not None and model_id is not None and metric in SCORED_METRICS:
                scores = _cached_first_scores(scorer, source_dir, n, cache, model_id)
            else:
                scores = scorer.scores([disk_pos[o] for o in layers], block_size=n)
            if metric == "manual":
                assert spec.layers is not None
                chosen = sorted(layers.index(i) for i in spec.layers)
            else:
                cur_protect = {j for j, o in enumerate(layers) if o in protect}
                chosen = choose_layers(metric, scores, n, len(layers), protect=cur_protect, seed=spec.seed + r,
                                       block_size=n)
            removed_orig = sorted(layers[j] for j in chosen)
            if r == 0:
                for j, s in enumerate(scores):
                    layer_scores[layers[j]] = None if s is None else float(s)
            rounds.append({"round": r, "num_layers": len(layers), "layers": list(layers),
                           "scores": [None if s is None else float(s) for s in scores],
                           "removed": removed_orig, "removed_current": list(chosen)})
            removed_total.extend(removed_orig)
            last = r == n_rounds - 1
            if heal and not last:
                # Heal the pruned model on disk, then score the healed one next round.
                round_dir = rounds_dir / f"round_{r}"
                shutil.rmtree(round_dir, ignore_errors=True)
                gone = set(removed_total)
                write(current_dir, round_dir, [i for i, o in enumerate(on_disk) if o in gone], r)
                on_disk = [o for o in on_disk if o not in gone]
                scorer.release()
                t_heal = time.monotonic()
                hooks.info(f"healing after round {r + 1}", round=r, removed=removed_orig)
                current_dir = _healed_dir(heal_round(round_dir, r), round_dir)  # type: ignore[misc]
                timings["heal"] = timings.get("heal", 0.0) + time.monotonic() - t_heal
                scorer.load(current_dir)
            elif not last:
                scorer.drop(chosen)
            chosen_set = set(chosen)
            layers = [o for j, o in enumerate(layers) if j not in chosen_set]
            rounds[-1]["seconds"] = time.monotonic() - t_round
        hooks.check()
        t_write = time.monotonic()
        gone = set(removed_total)
        shutil.rmtree(out_dir, ignore_errors=True)
        summary = write(current_dir, out_dir, [i for i, o in enumerate(on_disk) if o in gone], n_rounds - 1)
        timings["write"] = time.monotonic() - t_write
    finally:
        scorer.release()
        shutil.rmtree(rounds_dir, ignore_errors=True)
    hooks.progress(n_rounds, n_rounds, f"removed {len(removed_total)} of {num_layers} layers")
    timings["total"] = time.monotonic() - t_start
    calibration = calibration_provenance(scorer.calibration, spec) if scorer.calibration is not None else None
    return PruneResult(
        removed_layers=sorted(removed_total),
        layer_scores=layer_scores,
        metric=metric,
        semantics=spec.semantics,
        rounds=rounds,
        num_layers_before=num_layers,
        num_layers_after=num_layers - len(removed_total),
        params_before=params_before,
        params_after=int(summary["params_after"]),
        calibration=calibration,
        timings=timings,
        streamed=metric in ON_DISK_METRICS and spec.replacement is None,
        replacement=_merge_replacements(replaced),
    )


def scores_cache_key(spec: PruneSpec, model_id: str, block_size: int, device: Any) -> dict[str, Any]:
    """Everything the first round's scores of the input depend on (core.scoring.cache)."""
    from layerprune.core.device import pick_device, pick_dtype

    metric = spec.metric
    key: dict[str, Any] = {"model": model_id, "metric": metric, "semantics": spec.semantics}
    if metric in CALIBRATED_METRICS:
        # The forward passes' device and dtype change the figures (bf16 on a GPU, fp32 on a CPU).
        dev = pick_device() if device is None else torch.device(device)
        key.update(calibration=spec.calibration.model_dump(mode="json"), device=dev.type,
                   dtype=str(pick_dtype(dev)))
    if metric == "angular":
        key["block_size"] = block_size  # angular scores blocks of the size being removed
    return key


def _cached_first_scores(scorer: _Scorer, source_dir: Path, block_size: int, cache: ResultCache,
                         model_id: str) -> list[float | None]:
    from layerprune.core.scoring.cache import LAYER_SCORES, cache_key

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
    from layerprune.core.replace.write import check_foldable

    assert scorer.calibration is not None
    check_foldable(scorer.model, scorer.calibration)


def _write_replaced(scorer: _Scorer, src: Path, dst: Path, removed_idx: list[int], original: list[int],
                    round_index: int, replaced: list[dict[str, Any]]) -> dict[str, Any]:
    """Remove ``removed_idx`` from ``src`` into ``dst`` with each run replaced by a linear map."""
    from layerprune.core.replace.plan import runs_of
    from layerprune.core.replace.write import replace_and_write

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
