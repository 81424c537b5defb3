"""Job progress: weighted by measured stage cost, never backwards, and labelled down to the task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from layerprune.core.hooks import Hooks
from layerprune.core.progress import STAGE_WEIGHTS, JobProgress, evaluate_stage_parts, split, within
from layerprune.core.spec import EvaluateSpec, PerplexitySpec, SpeedSpec


def test_stage_shares_follow_the_measured_weights_and_skip_missing_stages():
    p = JobProgress(["prune", "finetune", "evaluate", "export"])
    total = sum(STAGE_WEIGHTS.values())
    assert p.spans["finetune"][0] == pytest.approx(STAGE_WEIGHTS["prune"] / total)
    assert p.spans["evaluate"][1] == pytest.approx(STAGE_WEIGHTS["evaluate"] / total)
    # Finetune and evaluate are where the time goes; export is a copy.
    assert p.spans["export"][1] < 0.05 < p.spans["evaluate"][1]
    q = JobProgress(["prune", "export"])  # no healing, no evaluation: the two shares are renormalised
    assert q.overall("export", 1.0) == pytest.approx(1.0)
    assert q.spans["prune"][1] == pytest.approx(STAGE_WEIGHTS["prune"] / (STAGE_WEIGHTS["prune"] + STAGE_WEIGHTS["export"]))


def test_progress_never_goes_backwards():
    p = JobProgress(["prune", "finetune", "evaluate", "export"])
    seen = [p.overall("finetune", 0.5), p.overall("finetune", 0.2),  # a restarted count
            p.overall("prune", 1.0),  # an earlier stage reported late
            p.overall("finetune", float("nan")), p.overall("evaluate", -3.0), p.overall("nosuch", 0.9),
            p.overall("evaluate", 0.5), p.overall("evaluate", 2.0)]
    assert seen == sorted(seen)
    assert seen[0] == seen[1] == seen[2] == seen[3]
    assert seen[4] == seen[5] == pytest.approx(p.spans["evaluate"][0])  # a clamped fraction: the stage's start
    assert seen[-1] == pytest.approx(p.spans["export"][0]) and seen[-1] < 1.0


def test_nested_parts_map_into_their_spans_and_label_the_innermost_work():
    got: list[tuple[float, dict]] = []
    last: dict = {}
    top = Hooks(progress=lambda d, t, m: got.append((d / t, dict(last))), detail=lambda v: (last.clear(), last.update(v)))
    after = within(top, 0.5, 0.9, part="after")
    tasks = within(after, 0.25, 1.0)
    tasks.detail({"task": "piqa", "task_done": 3, "task_total": 10})
    tasks.progress(5, 10, "piqa: 3/10 documents")
    frac, detail = got[-1]
    assert frac == pytest.approx(0.5 + 0.4 * (0.25 + 0.75 * 0.5))
    assert detail == {"part": "after", "task": "piqa", "task_done": 3, "task_total": 10, "done": 5, "total": 10}
    messages = []
    within(Hooks(log=lambda lvl, msg, data: messages.append(msg)), 0, 1, part="before").info("perplexity 18.99")
    assert messages == ["before: perplexity 18.99"]


def test_evaluate_stage_parts_cover_the_stage_in_order():
    spec = EvaluateSpec(perplexity=PerplexitySpec(max_windows=16), tasks=["arc_easy", "piqa"], limit=25,
                        speed=SpeedSpec())
    parts = evaluate_stage_parts(spec, compare=True)
    assert list(parts) == ["before", "after", "speed"]
    assert parts["before"][0] == 0.0 and parts["speed"][1] == pytest.approx(1.0)
    assert parts["before"][1] == parts["after"][0] and parts["after"][1] == parts["speed"][0]
    # The base model (all its layers) takes longer than the pruned result.
    assert parts["before"][1] - parts["before"][0] > parts["after"][1] - parts["after"][0]
    assert list(evaluate_stage_parts(EvaluateSpec(tasks=["piqa"]), compare=False)) == ["after"]
    assert split([("a", 1.0), ("b", 3.0)]) == {"a": (0.0, 0.25), "b": (0.25, 1.0)}


def test_evaluation_reports_each_tasks_documents_and_moves_forward(tiny_dirs, tmp_path: Path):
    from layerprune.core.evaluate import evaluate_model

    text = tmp_path / "eval.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 400)
    spec = EvaluateSpec(perplexity=PerplexitySpec(dataset=str(text), seq_len=32, max_windows=8),
                        tasks=["piqa", "arc_easy"], limit=6, batch_size=2)
    events: list[tuple[float, dict, str]] = []
    last: dict = {}
    hooks = Hooks(progress=lambda d, t, m: events.append((d / t, dict(last), m)),
                  detail=lambda v: (last.clear(), last.update(v)))
    evaluate_model(tiny_dirs("llama"), spec, within(hooks, 0.0, 1.0, part="after"), device="cpu")
    fracs = [f for f, _, _ in events]
    assert fracs == sorted(fracs) and fracs[-1] == pytest.approx(1.0)
    tasks = [d.get("task") for _, d, _ in events]
    assert tasks[0] == "load" and "perplexity" in tasks
    assert all(d["part"] == "after" for _, d, _ in events)
    # Perplexity ends well before the evaluation does: the tasks still have their share to fill.
    ppl_end = max(f for f, d, _ in events if d.get("task") == "perplexity")
    assert ppl_end < 0.5
    doc_events = [d for _, d, _ in events if "task_done" in d]
    assert doc_events and doc_events[-1]["tasks"] == {"piqa": [6, 6], "arc_easy": [6, 6]}
    for d in doc_events:
        assert d["task"] in ("piqa", "arc_easy") and 0 <= d["task_done"] <= d["task_total"] == 6
    assert any("documents" in m for _, _, m in events)
    json.dumps([d for _, d, _ in events])  # an event's data is JSON
