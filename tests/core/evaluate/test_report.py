"""core.evaluate.report: before/after comparison of hand-made evaluation results (no model).

Every expected figure is written out here from the numbers of the two results, not taken from
another call of ours.
"""

from __future__ import annotations

import pytest

from layerprune.core.evaluate.report import compare_results, speed_rows


def _speed(prefill: float | None, decode: float | None, batches: tuple[str, ...] = ("1", "8")) -> dict:
    return {"batches": {b: {"prefill_tokens_per_s": None if prefill is None else prefill * int(b),
                            "decode_tokens_per_s": None if decode is None else decode * int(b)} for b in batches}}


BEFORE = {
    "perplexity": {"value": 20.0, "dataset": "wikitext"},
    "tasks": {
        "arc_easy": {"acc": 0.60, "acc_norm": 0.55},
        "lambada": {"acc": 0.40, "perplexity": 10.0, "higher_is_better": {"acc": True, "perplexity": False}},
        "gsm8k": {"exact_match,strict-match": 0.20, "exact_match,flexible-extract": 0.25,
                  "higher_is_better": {"exact_match,strict-match": True, "exact_match,flexible-extract": True}},
        "only_before": {"acc": 0.9},
    },
    "params": 1000, "size_bytes": 4000, "num_layers": 8, "generation_tokens_per_s": 50.0,
}
AFTER = {
    "perplexity": {"value": 30.0, "dataset": "wikitext"},
    "tasks": {
        "arc_easy": {"acc": 0.50, "acc_norm": None},
        "lambada": {"acc": 0.30, "perplexity": 25.0, "higher_is_better": {"acc": True, "perplexity": False}},
        "gsm8k": {"exact_match,strict-match": 0.10, "exact_match,flexible-extract": 0.15,
                  "higher_is_better": {"exact_match,strict-match": True, "exact_match,flexible-extract": True}},
        "only_after": {"acc": 0.1},
    },
    "params": 750, "size_bytes": 3000, "num_layers": 6, "generation_tokens_per_s": None,
}


def test_perplexity_delta_and_ratio() -> None:
    assert compare_results(BEFORE, AFTER)["perplexity"] == {"before": 20.0, "after": 30.0, "delta": 10.0,
                                                           "ratio": 1.5}


def test_tasks_on_both_sides_only_with_their_own_metrics() -> None:
    tasks = compare_results(BEFORE, AFTER)["tasks"]
    assert set(tasks) == {"arc_easy", "lambada", "gsm8k"}  # only_before / only_after: one side only
    assert tasks["arc_easy"]["acc"] == {"before": 0.60, "after": 0.50, "delta": pytest.approx(-0.10)}
    # A metric missing (None) on one side has no delta, and is still listed.
    assert tasks["arc_easy"]["acc_norm"] == {"before": 0.55, "after": None, "delta": None}
    # Generative tasks list their own metrics; acc/acc_norm are not invented for them.
    assert set(tasks["gsm8k"]) == {"exact_match,strict-match", "exact_match,flexible-extract"}
    assert tasks["gsm8k"]["exact_match,flexible-extract"]["delta"] == pytest.approx(-0.10)
    # LAMBADA's perplexity gets a ratio as well; its accuracy does not.
    assert tasks["lambada"]["perplexity"] == {"before": 10.0, "after": 25.0, "delta": 15.0, "ratio": 2.5}
    assert "ratio" not in tasks["lambada"]["acc"]


def test_shape_figures_deltas_and_params_ratio() -> None:
    out = compare_results(BEFORE, AFTER)
    assert out["params"] == {"before": 1000, "after": 750, "delta": -250, "ratio": 0.75}
    assert out["size_bytes"] == {"before": 4000, "after": 3000, "delta": -1000}
    assert out["num_layers"] == {"before": 8, "after": 6, "delta": -2}
    assert out["generation_tokens_per_s"] == {"before": 50.0, "after": None, "delta": None}


def test_results_without_perplexity_tasks_or_speed() -> None:
    out = compare_results({"params": None}, {"params": 10})
    assert out["perplexity"] is None
    assert out["tasks"] == {}
    assert "speed" not in out
    assert out["params"] == {"before": None, "after": 10, "delta": None}  # no ratio without both sides
    # One side without perplexity: nothing to compare, not a crash.
    assert compare_results({"perplexity": {"value": 5.0}}, {"perplexity": None})["perplexity"] is None


def test_speed_is_compared_only_when_both_sides_measured_it() -> None:
    assert "speed" not in compare_results({**BEFORE, "speed": _speed(100.0, 10.0)}, AFTER)
    out = compare_results({**BEFORE, "speed": _speed(100.0, 10.0)}, {**AFTER, "speed": _speed(150.0, 12.0)})
    fig = out["speed"]["batches"]["8"]["prefill_tokens_per_s"]
    assert fig == {"before": 800.0, "after": 1200.0, "delta": 400.0, "ratio": 1.5}
    assert out["speed"]["batches"]["1"]["decode_tokens_per_s"]["ratio"] == pytest.approx(1.2)


def test_speed_rows_label_each_figure_with_its_speed_up() -> None:
    before, after = {**BEFORE, "speed": _speed(100.0, 10.0)}, {**AFTER, "speed": _speed(150.0, None)}
    metrics = {"before": before, "after": after, "deltas": compare_results(before, after)}
    rows = speed_rows(metrics)
    assert [r[0] for r in rows] == ["prefill tok/s (batch 1)", "prefill tok/s (batch 8)",
                                    "decode tok/s (batch 1)", "decode tok/s (batch 8)"]
    assert rows[1] == ("prefill tok/s (batch 8)", 800.0, 1200.0, 1.5)
    assert rows[2] == ("decode tok/s (batch 1)", 10.0, None, None)  # not measured after: no speed-up


def test_speed_rows_of_one_side_or_nothing() -> None:
    assert speed_rows(None) == []
    assert speed_rows("not a dict") == []
    assert speed_rows({"before": {"params": 1}, "after": {}}) == []
    # Only the pruned model was measured (no deltas): its figures, no before, no ratio.
    rows = speed_rows({"after": {"speed": _speed(150.0, 12.0, batches=("1",))}})
    assert rows == [("prefill tok/s (batch 1)", None, 150.0, None), ("decode tok/s (batch 1)", None, 12.0, None)]
