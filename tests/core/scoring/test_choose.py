"""choose_layers: which layers go, for every metric, and its typed errors (no model needed)."""

from __future__ import annotations

import pytest

from layerprune.core.errors import SpecError
from layerprune.core.scoring import choose_layers


@pytest.mark.parametrize(("num_layers", "k", "expected"), [(32, 8, list(range(24, 32))), (26, 6, list(range(20, 26)))])
def test_reverse_order_removes_the_last_k(num_layers: int, k: int, expected: list[int]) -> None:
    assert choose_layers("reverse_order", None, k, num_layers) == expected


def test_reverse_order_skips_protected_layers() -> None:
    assert choose_layers("reverse_order", None, 3, 10, protect={9, 7}) == [5, 6, 8]


def test_random_is_reproducible_by_seed_distinct_and_avoids_protected() -> None:
    a = choose_layers("random", None, 5, 30, seed=7, protect={0, 1})
    b = choose_layers("random", None, 5, 30, seed=7, protect={0, 1})
    assert a == b
    assert len(set(a)) == 5 and a == sorted(a)
    assert not {0, 1} & set(a)
    draws = {tuple(choose_layers("random", None, 5, 30, seed=s)) for s in range(10)}
    assert len(draws) > 1  # the seed matters


def test_random_golden_draw() -> None:
    # random.Random(seed).sample is stable across Python versions: a pinned draw guards reproducibility.
    assert choose_layers("random", None, 3, 10, seed=42) == sorted(__import__("random").Random(42).sample(range(10), 3))


@pytest.mark.parametrize("metric", ["magnitude_l1", "magnitude_l2", "taylor", "ppl", "block_influence"])
def test_scored_metrics_take_the_lowest_scores(metric: str) -> None:
    scores = [5.0, 1.0, 3.0, 0.5, 4.0, 2.0]
    assert choose_layers(metric, scores, 2, 6) == [1, 3]
    assert choose_layers(metric, scores, 2, 6, protect={3}) == [1, 5]


def test_ties_go_to_the_lower_index() -> None:
    assert choose_layers("ppl", [2.0, 1.0, 1.0, 1.0, 3.0], 2, 5) == [1, 2]


def test_unscored_layer_is_never_chosen() -> None:
    # Reference-code block influence leaves the last layer unscored (None).
    scores: list[float | None] = [0.5, 0.4, 0.3, None]
    assert choose_layers("block_influence", scores, 3, 4) == [0, 1, 2]
    with pytest.raises(SpecError) as exc:
        choose_layers("block_influence", scores, 3, 4, protect={0})
    assert exc.value.param == "prune.protect_layers"


def test_angular_takes_the_closest_contiguous_block() -> None:
    # L=8, k=3: scores per block start 0..5.
    scores = [0.9, 0.8, 0.2, 0.1, 0.5, 0.6]
    assert choose_layers("angular", scores, 3, 8, block_size=3) == [3, 4, 5]
    assert choose_layers("angular", scores, 3, 8, protect={5}, block_size=3) == [2, 3, 4]
    # Ties go to the earlier block.
    assert choose_layers("angular", [0.3, 0.1, 0.1, 0.3, 0.4, 0.5], 3, 8, block_size=3) == [1, 2, 3]


def test_angular_without_a_free_block_is_a_spec_error() -> None:
    with pytest.raises(SpecError) as exc:
        choose_layers("angular", [0.1, 0.2, 0.3], 3, 5, protect={2}, block_size=3)
    assert exc.value.param == "prune.protect_layers"


def test_angular_needs_one_score_per_block_start() -> None:
    with pytest.raises(ValueError):
        choose_layers("angular", [0.1] * 8, 3, 8, block_size=3)


def test_unknown_metric_is_a_spec_error_on_prune_metric() -> None:
    with pytest.raises(SpecError) as exc:
        choose_layers("cosine", [1.0, 2.0], 1, 2)
    assert exc.value.param == "prune.metric"


@pytest.mark.parametrize("k", [0, -1, 6, 7])
def test_k_out_of_range_is_a_spec_error(k: int) -> None:
    with pytest.raises(SpecError) as exc:
        choose_layers("reverse_order", None, k, 6)
    assert exc.value.param == "prune.num_layers"


@pytest.mark.parametrize("metric", ["reverse_order", "random", "ppl"])
def test_protection_that_makes_k_impossible_is_a_spec_error(metric: str) -> None:
    with pytest.raises(SpecError) as exc:
        choose_layers(metric, [1.0] * 6, 3, 6, protect={0, 1, 2, 3})
    assert exc.value.param == "prune.protect_layers"


def test_protected_index_out_of_range_is_a_spec_error() -> None:
    with pytest.raises(SpecError) as exc:
        choose_layers("reverse_order", None, 1, 6, protect={6})
    assert exc.value.param == "prune.protect_layers"


def test_manual_has_nothing_to_choose() -> None:
    with pytest.raises(SpecError) as exc:
        choose_layers("manual", None, 1, 6)
    assert exc.value.param == "prune.layers"


def test_scored_metric_without_scores_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        choose_layers("taylor", None, 1, 6)
    with pytest.raises(ValueError):
        choose_layers("taylor", [1.0, 2.0], 1, 6)
