"""One record per pruning metric: what choosing layers with it needs. The one source of these facts.

Routing (the service's gpu/cpu queue), scoring (``score_layers``), pruning (load a model or not,
calibrate or not) and the API all read :data:`METRIC_REGISTRY`; nothing else lists metrics by
what they need. The metric names themselves are core.spec's ``Metric`` (the spec's schema); this
module refuses to load when the two disagree.

Torch-free: implementations are named as ``"module:function"`` and imported on first use.
"""

from __future__ import annotations

from dataclasses import dataclass

from layerprune.core.errors import SpecError
from layerprune.core.spec import METRICS


@dataclass(frozen=True)
class MetricInfo:
    name: str
    # "module:function" of the scorer; None: the metric has no scores (position, seed, a list).
    scorer: str | None
    # Scores come from forward passes over calibration text (core/scoring/calibration.py).
    needs_calibration: bool
    # The model is loaded into memory to score; False: chosen from the files or without looking.
    needs_model: bool
    # Scoring does enough forward/backward passes that a job using it belongs on a GPU worker.
    needs_gpu: bool

    @property
    def has_scores(self) -> bool:
        return self.scorer is not None

    @property
    def scores_from_files(self) -> bool:
        """Scored by streaming the weight files (no model in memory)."""
        return self.has_scores and not self.needs_model


def _metric(name: str, scorer: str | None = None, *, calibrated: bool = False,
            model: bool = False) -> MetricInfo:
    if calibrated and not model:
        raise ValueError(f"metric {name}: calibration data is only used by a loaded model")
    # Every metric that runs the model over calibration text needs a GPU to be practical; the
    # others read at most the weights once.
    return MetricInfo(name=name, scorer=scorer, needs_calibration=calibrated, needs_model=model,
                      needs_gpu=calibrated)


_SCORING = "layerprune.core.scoring"
METRIC_REGISTRY: dict[str, MetricInfo] = {m.name: m for m in (
    _metric("reverse_order"),
    _metric("random"),
    _metric("manual"),
    _metric("magnitude_l1", f"{_SCORING}.magnitude:magnitude_scores"),
    _metric("magnitude_l2", f"{_SCORING}.magnitude:magnitude_scores"),
    _metric("taylor", f"{_SCORING}.taylor:taylor_scores", calibrated=True, model=True),
    _metric("ppl", f"{_SCORING}.perplexity:ppl_scores", calibrated=True, model=True),
    _metric("block_influence", f"{_SCORING}.similarity:block_influence_scores", calibrated=True, model=True),
    _metric("angular", f"{_SCORING}.similarity:angular_scores", calibrated=True, model=True),
)}

if set(METRIC_REGISTRY) != set(METRICS):  # pragma: no cover - a metric added to one list only
    raise RuntimeError(f"core.spec.METRICS {METRICS} and the metric registry {tuple(METRIC_REGISTRY)} differ")
for _name in METRIC_REGISTRY:
    if _name != _name.lower() or not _name.isidentifier():  # pragma: no cover
        raise RuntimeError(f"metric name {_name!r} must be a lowercase identifier")


def metric_info(metric: str) -> MetricInfo:
    """The record of ``metric``; SpecError naming ``prune.metric`` for an unknown one."""
    info = METRIC_REGISTRY.get(metric)
    if info is None:
        raise SpecError(f"unknown metric '{metric}' (one of {', '.join(METRIC_REGISTRY)})", param="prune.metric")
    return info
