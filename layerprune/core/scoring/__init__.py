"""Layer-scoring metrics and layer choice (docs/methods.md §1): the public API.

Importing this package is torch-free (the API validates specs and describes metrics without
torch): each metric's implementation is named as ``"module:function"`` and imported on first use.

Scores are per current decoder layer, lower = removed first. ``angular`` gives one score per
block start ℓ = 0..L−n (n = ``block_size`` = k); reverse_order, random and manual give None
scores. Calibration is a [num_samples, seq_len] tensor of token ids
(:func:`calibration_batches`); ``batch_size`` splits it into rows per forward (None: one batch).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerprune.core.errors import SpecError
from layerprune.core.hooks import NO_HOOKS, Hooks
from layerprune.core.scoring.choose import choose_layers

if TYPE_CHECKING:
    import torch
    from torch import nn

    from layerprune.core.spec import CalibrationSpec

__all__ = [
    "SCORERS",
    "calibration_batches",
    "choose_layers",
    "magnitude_scores_from_files",
    "needs_calibration",
    "needs_model",
    "score_layers",
]

# metric -> "module:function" of its scorer; None: the metric has no scores (position, seed, list).
SCORERS: dict[str, str | None] = {
    "reverse_order": None,
    "random": None,
    "manual": None,
    "magnitude_l1": "layerprune.core.scoring.magnitude:magnitude_scores",
    "magnitude_l2": "layerprune.core.scoring.magnitude:magnitude_scores",
    "taylor": "layerprune.core.scoring.taylor:taylor_scores",
    "ppl": "layerprune.core.scoring.perplexity:ppl_scores",
    "block_influence": "layerprune.core.scoring.similarity:block_influence_scores",
    "angular": "layerprune.core.scoring.similarity:angular_scores",
}
for _name in SCORERS:
    assert _name == _name.lower() and _name.isidentifier(), _name

_CALIBRATED = frozenset({"taylor", "ppl", "block_influence", "angular"})
_NO_MODEL = frozenset({"reverse_order", "random", "manual", "magnitude_l1", "magnitude_l2"})
SEMANTICS = ("paper", "reference_code")


def _check_metric(metric: str) -> None:
    if metric not in SCORERS:
        raise SpecError(f"unknown metric '{metric}' (one of {', '.join(SCORERS)})", param="prune.metric")


def needs_calibration(metric: str) -> bool:
    _check_metric(metric)
    return metric in _CALIBRATED


def needs_model(metric: str) -> bool:
    """False where the layers can be chosen without loading the model (position, seed, files)."""
    _check_metric(metric)
    return metric not in _NO_MODEL


def _resolve(target: str) -> Any:
    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)


def score_layers(
    model: nn.Module,
    metric: str,
    *,
    calibration: torch.Tensor | None,
    semantics: str = "paper",
    hooks: Hooks = NO_HOOKS,
    block_size: int = 1,
    batch_size: int | None = None,
) -> list[float | None]:
    """One score per current decoder layer (angular: per block start); lower = removed first."""
    _check_metric(metric)
    if semantics not in SEMANTICS:
        raise SpecError(f"unknown semantics '{semantics}' (one of {', '.join(SEMANTICS)})", param="prune.semantics")
    target = SCORERS[metric]
    if target is None:
        from layerprune.core.architecture import find_decoder_parts

        return [None] * len(find_decoder_parts(model).layers)
    scorer = _resolve(target)
    if metric.startswith("magnitude_"):
        return list(scorer(model, 1 if metric == "magnitude_l1" else 2, semantics))
    if calibration is None:
        raise SpecError(f"metric '{metric}' needs calibration data", param="prune.calibration")
    hooks.check()
    # Scores are of the model as it will run: dropout off, whatever mode the caller left it in.
    was_training = model.training
    model.eval()
    try:
        if metric == "block_influence":
            return list(scorer(model, calibration, semantics=semantics, hooks=hooks, batch_size=batch_size))
        if metric == "angular":
            return list(scorer(model, calibration, block_size=block_size, hooks=hooks, batch_size=batch_size))
        return list(scorer(model, calibration, hooks=hooks, batch_size=batch_size))
    finally:
        model.train(was_training)


def magnitude_scores_from_files(model_dir: Path, p: int, semantics: str = "paper") -> list[float]:
    """magnitude_l1 (p=1) / magnitude_l2 (p=2) streamed from the safetensors files, never the whole model."""
    from layerprune.core.scoring.magnitude import magnitude_scores_from_files as stream

    return stream(Path(model_dir), p, semantics)


def calibration_batches(tokenizer: Any, spec: CalibrationSpec) -> torch.Tensor:
    """[num_samples, seq_len] token ids: seeded random windows of the calibration data set."""
    from layerprune.core.scoring.calibration import calibration_batches as windows

    return windows(tokenizer, spec)
