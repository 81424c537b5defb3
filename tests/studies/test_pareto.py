"""Pareto fronts and the recommendation rule (layerprune.studies.pareto), by hand-checked cases."""

from __future__ import annotations

from layerprune.studies.pareto import Point, meets_constraints, params_front, recommend, speed_front
from layerprune.studies.spec import StudySpec, expand

POINTS = [
    Point("a", quality=0.60, params=100, speedup=1.1),
    Point("b", quality=0.55, params=80, speedup=1.3),
    Point("c", quality=0.50, params=90, speedup=1.2),   # worse and bigger than b: dominated on params
    Point("d", quality=0.40, params=60, speedup=1.2),   # dominated on speed by b (b faster and better)
    Point("e", quality=None, params=50, speedup=2.0),   # not finished: on no front
    Point("f", quality=0.55, params=80, speedup=None),  # b's twin without speed: equal on params, no speed
]


def test_params_front_accuracy():
    assert params_front(POINTS, higher_is_better=True) == ["a", "b", "d", "f"]


def test_speed_front_accuracy():
    assert speed_front(POINTS, higher_is_better=True) == ["a", "b"]


def test_fronts_for_perplexity_lower_is_better():
    pts = [Point("x", 10.0, 100, 1.0), Point("y", 12.0, 80, 1.3), Point("z", 11.0, 120, 1.4), Point("w", 13.0, 90, 1.2)]
    assert params_front(pts, higher_is_better=False) == ["x", "y"]
    assert speed_front(pts, higher_is_better=False) == ["x", "z"]  # z: lower perplexity and faster than y


def test_constraints():
    assert meets_constraints(POINTS[0], max_params=90, min_speedup=None) is False
    assert meets_constraints(POINTS[1], max_params=90, min_speedup=1.25) is True
    assert meets_constraints(POINTS[5], max_params=None, min_speedup=1.0) is None  # speed unknown
    assert meets_constraints(POINTS[4], max_params=None, min_speedup=None) is None  # no quality yet


def test_recommendation_best_quality_on_the_front_within_constraints():
    rec = recommend(POINTS, True, "mean_acc", max_params=None, min_speedup=None, base_params=200,
                    labels={"a": "taylor · 25%"})
    assert rec is not None and rec.key == "a"
    assert "taylor · 25%" in rec.reason and "0.6" in rec.reason and "50% of the base model's" in rec.reason
    rec = recommend(POINTS, True, "mean_acc", max_params=90, min_speedup=None)
    assert rec is not None and rec.key == "b"  # b and f tie; b comes first
    rec = recommend(POINTS, True, "mean_acc", max_params=90, min_speedup=1.25)
    assert rec is not None and rec.key == "b" and "at least 1.25x" in rec.reason
    assert recommend(POINTS, True, "mean_acc", max_params=10, min_speedup=None) is None


def test_expand_axes_labels_and_origins():
    study = StudySpec.model_validate({
        "axes": {"metrics": ["angular", "taylor"], "ratios": [0.25], "replace": ["none", "linear"],
                 "heal_methods": ["none", "partial"], "heal_objectives": ["lm", "distill"]},
        "finetune": {"max_steps": 2}, "evaluate": {"tasks": ["arc_easy"], "limit": 10}})
    cands = expand(study)
    # heal: none (once) + partial × {lm, distill} = 3; × replace 2 × metrics 2
    assert len(cands) == 12
    assert cands[0].label == "angular · 25%"
    assert cands[5].label == "angular · 25% · linear · partial distill"
    assert cands[5].job_spec["finetune"] == {"max_steps": 2, "method": "partial", "objective": "distill"}
    assert cands[5].study_param("finetune.objective") == "axes.heal_objectives[1]"
    assert cands[5].study_param("prune.ratio") == "axes.ratios[0]"
    assert cands[5].study_param("prune.calibration.seq_len") == "prune.calibration.seq_len"
    assert cands[6].study_param("prune.metric") == "axes.metrics[1]"
