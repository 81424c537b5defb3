"""core/layer_plan.py: the one check of a prune spec's layer plan, made by the API and the worker."""

from __future__ import annotations

from typing import Any

import pytest

from layerprune.core.errors import SpecError
from layerprune.core.layer_plan import check_layer_plan
from layerprune.core.prune import prune_model
from layerprune.core.spec import PruneSpec
from tests.tiny import LAYERS


@pytest.mark.parametrize(("prune", "removed", "step", "rounds"), [
    ({"num_layers": 3}, 3, 3, 1),
    ({"num_layers": 3, "iterative_step": 1}, 3, 1, 3),
    ({"num_layers": 3, "iterative_step": 2}, 3, 2, 2),
    ({"num_layers": 3, "iterative_step": 3}, 3, 3, 1),
    ({"ratio": 0.25, "iterative_step": 2}, 2, 2, 1),
    # manual names its layers up front: one round whatever the step
    ({"metric": "manual", "layers": [1, 4, 6], "iterative_step": 2}, 3, 3, 1),
])
def test_plan(prune: dict[str, Any], removed: int, step: int, rounds: int) -> None:
    plan = check_layer_plan(PruneSpec.model_validate(prune), LAYERS)
    assert (plan.removed, plan.step, plan.rounds, plan.remaining) == (removed, step, rounds, LAYERS - removed)


@pytest.mark.parametrize(("prune", "param"), [
    ({"num_layers": 2, "iterative_step": 3}, "prune.iterative_step"),
    ({"ratio": 0.25, "iterative_step": 3}, "prune.iterative_step"),  # 25% of 8 is 2
    ({"metric": "manual", "layers": [1, 2], "iterative_step": 3}, "prune.iterative_step"),
    ({"num_layers": 8}, "prune.num_layers"),
    ({"num_layers": 2, "protect_layers": [8]}, "prune.protect_layers"),
])
def test_refusals_name_the_field(prune: dict[str, Any], param: str) -> None:
    with pytest.raises(SpecError) as info:
        check_layer_plan(PruneSpec.model_validate(prune), LAYERS)
    assert info.value.param == param


def test_the_worker_refuses_what_the_api_refuses(tiny_dirs, tmp_path) -> None:
    """A hub model's layer count is not known at POST time unless its config is cached: the worker's
    own pruning refuses the plan with the same error, before anything is loaded or written."""
    spec = PruneSpec(metric="taylor", num_layers=2, iterative_step=3)
    with pytest.raises(SpecError) as info:
        prune_model(tiny_dirs("llama"), spec, tmp_path / "out")
    assert info.value.param == "prune.iterative_step" and "3 is more than the 2 layers removed" in info.value.message
    assert not (tmp_path / "out").exists()
