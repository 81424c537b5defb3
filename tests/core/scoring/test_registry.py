"""The metric registry (core/scoring/registry.py): one record per metric, read by every layer."""

from __future__ import annotations

import importlib

import pytest

from layerprune.core.errors import SpecError
from layerprune.core.scoring import needs_calibration, needs_model
from layerprune.core.scoring.registry import METRIC_REGISTRY, metric_info
from layerprune.core.spec import METRICS

# What each metric needs, written out from docs/methods.md §1 (not read from the registry).
EXPECTED = {
    #                 calibration, loaded model, GPU, scores
    "reverse_order": (False, False, False, False),
    "random": (False, False, False, False),
    "manual": (False, False, False, False),
    "magnitude_l1": (False, False, False, True),
    "magnitude_l2": (False, False, False, True),
    "taylor": (True, True, True, True),
    "ppl": (True, True, True, True),
    "block_influence": (True, True, True, True),
    "angular": (True, True, True, True),
}


def test_every_spec_metric_has_exactly_one_record() -> None:
    assert set(METRIC_REGISTRY) == set(METRICS) == set(EXPECTED)
    for name, info in METRIC_REGISTRY.items():
        assert info.name == name


@pytest.mark.parametrize("metric", sorted(EXPECTED))
def test_record(metric: str) -> None:
    info = metric_info(metric)
    assert (info.needs_calibration, info.needs_model, info.needs_gpu, info.has_scores) == EXPECTED[metric]
    assert needs_calibration(metric) is info.needs_calibration and needs_model(metric) is info.needs_model
    assert info.scores_from_files == (info.has_scores and not info.needs_model)


@pytest.mark.parametrize("metric", sorted(m for m, e in EXPECTED.items() if e[3]))
def test_each_scorer_names_a_function(metric: str) -> None:
    target = metric_info(metric).scorer
    assert target is not None
    module, _, func = target.partition(":")
    assert callable(getattr(importlib.import_module(module), func))


def test_an_unknown_metric_is_a_spec_error_naming_the_field() -> None:
    for call in (lambda: metric_info("cosine"), lambda: needs_calibration("cosine"), lambda: needs_model("cosine")):
        with pytest.raises(SpecError) as info:
            call()
        assert info.value.param == "prune.metric" and "angular" in info.value.message
