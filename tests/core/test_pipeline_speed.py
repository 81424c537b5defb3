"""A pruning job with evaluate.speed: before and after measured together, ratios in the result and the card."""

from __future__ import annotations

import json

import pytest

from layerprune.core.hooks import Hooks
from layerprune.core.pipeline import run_pipeline
from layerprune.core.sources import resolve_model
from layerprune.core.spec import JobSpec

SPEED = {"prompt_tokens": 8, "new_tokens": 3, "batch_sizes": [1, 2], "repeats": 1, "warmup": 1}


def test_prune_with_speed_reports_before_after_and_speed_up(tiny_root, tmp_path):
    spec = JobSpec.model_validate({"model": str(tiny_root / "tiny"), "prune": {"metric": "reverse_order", "num_layers": 4},
                                   "evaluate": {"speed": SPEED}})
    source = resolve_model(spec.model, None, model_roots=[tiny_root])
    result = run_pipeline(spec, source, tmp_path, Hooks(), on_stage=lambda s: None)
    metrics = result["metrics"]
    before, after = metrics["before"]["speed"], metrics["after"]["speed"]
    assert before["settings"] == after["settings"] == {**SPEED, "interleaved": True}
    assert before["device"] == after["device"] == "cpu"
    for b in ("1", "2"):
        for name in ("prefill_tokens_per_s", "decode_tokens_per_s"):
            x, y = before["batches"][b][name], after["batches"][b][name]
            assert x > 0 and y > 0
            assert metrics["deltas"]["speed"]["batches"][b][name]["ratio"] == pytest.approx(y / x)
    assert metrics["before"]["num_layers"] == 8 and metrics["after"]["num_layers"] == 4
    record = json.loads((tmp_path / "output" / "layerprune.json").read_text())
    assert record["metrics"]["deltas"]["speed"] == metrics["deltas"]["speed"]
    card = (tmp_path / "output" / "README.md").read_text()
    ratio = metrics["deltas"]["speed"]["batches"]["1"]["decode_tokens_per_s"]["ratio"]
    assert "| decode tok/s (batch 1) |" in card and f"x{ratio:.2f}" in card


def test_evaluate_only_job_measures_the_one_model(tiny_root, tmp_path):
    spec = JobSpec.model_validate({"model": str(tiny_root / "tiny"), "evaluate": {"speed": SPEED}})
    source = resolve_model(spec.model, None, model_roots=[tiny_root])
    result = run_pipeline(spec, source, tmp_path, Hooks(), on_stage=lambda s: None)
    assert result["metrics"]["before"] is None and result["metrics"]["deltas"] is None
    assert result["metrics"]["after"]["speed"]["batches"]["2"]["decode_tokens_per_s"] > 0
