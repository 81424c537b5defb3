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
from layerprune.core.scoring.registry import METRIC_REGISTRY, MetricInfo, metric_info

if TYPE_CHECKING:
    import torch
    from torch import nn

    from layerprune.core.spec import CalibrationSpec

__all__ = [
    "METRIC_REGISTRY",
    "MetricInfo",
    "calibration_batches",
    "choose_layers",
    "magnitude_scores_from_files",
    "metric_info",
    "needs_calibration",
    "needs_model",
    "score_layers",
]

SEMANTICS = ("paper", "reference_code")


def needs_calibration(metric: str) -> bool:
    return metric_info(metric).needs_calibration


def needs_model(metric: str) -> bool:
    """False where the layers can be chosen without loading the model (position, seed, files)."""
    return metric_info(metric).needs_model


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
    info = metric_info(metric)
    if semantics not in SEMANTICS:
        raise SpecError(f"unknown semantics '{semantics}' (one of {', '.join(SEMANTICS)})", param="prune.semantics")
    target = info.scorer
    if target is None:
        from layerprune.core.architecture import find_decoder_parts  # noqa: PLC0415 - keeps torch out of the API (api.routing reads the registry)

        return [None] * len(find_decoder_parts(model).layers)
    scorer = _resolve(target)
    if metric.startswith("magnitude_"):
        return list(scorer(model, 1 if metric == "magnitude_l1" else 2, semantics))
    if info.needs_calibration and calibration is None:
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
    from layerprune.core.scoring.magnitude import magnitude_scores_from_files as stream  # noqa: PLC0415 - keeps torch out of the API

    return stream(Path(model_dir), p, semantics)


def calibration_batches(tokenizer: Any, spec: CalibrationSpec) -> torch.Tensor:
    """[num_samples, seq_len] token ids: seeded random windows of the calibration data set."""
    from layerprune.core.scoring.calibration import calibration_batches as windows  # noqa: PLC0415 - keeps torch out of the API

    return windows(tokenizer, spec)
