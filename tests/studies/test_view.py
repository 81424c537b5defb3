"""The study object from rows (layerprune.studies.view): figures, speed-up, status derivation."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from layerprune.studies.view import mean_acc, speedup, study_object

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _speed(decode: float, prefill: float) -> dict:
    return {"batches": {"8": {"decode_tokens_per_s": 1.0, "prefill_tokens_per_s": 1.0},
                        "1": {"decode_tokens_per_s": decode, "prefill_tokens_per_s": prefill}}}


def _job(job_id: str, status: str, result: dict | None = None) -> SimpleNamespace:
    return SimpleNamespace(id=job_id, status=status, result=result, updated_at=T0,
                           finished_at=T0 if status in ("succeeded", "failed", "cancelled") else None)


def _study(**kw) -> SimpleNamespace:
    plan = {"quality": "mean_acc", "higher_is_better": True, "candidates": [
        {"job_id": "job_a", "label": "taylor · 25%", "recipe": {}},
        {"job_id": "job_b", "label": "taylor · 50%", "recipe": {}}]}
    base = dict(id="study_x", spec={"model": "m", "constraints": {"min_speedup": 1.5}}, plan=plan,
                baseline_job_id="job_base", metadata_={}, created_at=T0, updated_at=T0, finished_at=None,
                cancel_requested_at=None)
    return SimpleNamespace(**{**base, **kw})


BASE = {"params_before": 1000, "metrics": {"before": None, "after": {
    "perplexity": {"value": 10.0}, "tasks": {"arc_easy": {"acc": 0.6}, "piqa": {"acc": 0.7}},
    "speed": _speed(100.0, 1000.0)}}}


def _cand(params: int, acc: float, decode_after: float) -> dict:
    return {"params_after": params, "metrics": {
        "before": {"speed": _speed(100.0, 1000.0)},
        "after": {"perplexity": {"value": 12.0}, "tasks": {"arc_easy": {"acc": acc}}, "speed": _speed(decode_after, 1.0)}}}


def test_figures_fronts_and_recommendation():
    jobs = [_job("job_base", "succeeded", BASE), _job("job_a", "succeeded", _cand(800, 0.55, 130.0)),
            _job("job_b", "succeeded", _cand(500, 0.40, 190.0))]
    view = study_object(_study(), jobs, {"model": "m"})
    assert view["status"] == "succeeded" and view["progress"] == {"done": 2, "total": 2}
    assert view["baseline"]["params"] == 1000 and view["baseline"]["results"]["mean_acc"] == pytest.approx(0.65)
    assert view["baseline"]["speed"] == {"prefill_tokens_per_s": 1000.0, "decode_tokens_per_s": 100.0, "batch_size": 1}
    a, b = view["candidates"]
    assert a["results"] == {"params": 800, "perplexity": 12.0, "mean_acc": 0.55, "quality": 0.55,
                            "speedup": pytest.approx(1.3)}
    assert a["meets_constraints"] is False and b["meets_constraints"] is True
    assert view["pareto"] == {"params": ["job_a", "job_b"], "speed": ["job_a", "job_b"]}
    assert view["recommendation"]["job_id"] == "job_b"  # the only one on the front with a 1.5x speed-up
    assert "50% of the base model's" in view["recommendation"]["reason"]


def test_status_derivation():
    queued = [_job("job_base", "queued"), _job("job_a", "queued"), _job("job_b", "queued")]
    assert study_object(_study(), queued, {})["status"] == "queued"
    running = [_job("job_base", "running"), _job("job_a", "queued"), _job("job_b", "queued")]
    assert study_object(_study(), running, {})["status"] == "running"
    one_failed = [_job("job_base", "succeeded", BASE), _job("job_a", "failed"),
                  _job("job_b", "succeeded", _cand(500, 0.4, 190.0))]
    assert study_object(_study(), one_failed, {})["status"] == "succeeded"
    none_ok = [_job("job_base", "succeeded", BASE), _job("job_a", "failed"), _job("job_b", "failed")]
    assert study_object(_study(), none_ok, {})["status"] == "failed"
    cancelled = [_job("job_base", "succeeded", BASE), _job("job_a", "cancelled"), _job("job_b", "cancelled")]
    assert study_object(_study(cancel_requested_at=T0), cancelled, {})["status"] == "cancelled"


def test_mean_acc_and_speedup_edges():
    assert mean_acc({}) is None
    assert mean_acc({"gsm8k": {"exact_match": 0.2, "higher_is_better": {"exact_match": True}}}) is None
    assert speedup({"speed": None}, {"speed": _speed(1, 1)}) is None
