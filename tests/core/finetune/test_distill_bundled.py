"""A distillation job on the real bundled model: SmolLM2-135M loses its last 7 layers, and the
pruned student is healed from the unpruned input model on the bundled Wikipedia training split
(plain text, packed), through core.pipeline like any job."""

from __future__ import annotations

import json

import pytest

from layerprune.core.hooks import Hooks
from layerprune.core.pipeline import run_pipeline
from layerprune.core.sources import resolve_model
from layerprune.core.spec import JobSpec


@pytest.mark.slow
def test_distillation_job_on_bundled_wikipedia_text(tmp_path, bundled_dir):
    spec = JobSpec.model_validate({
        "model": "bundled:smollm2-135m-instruct",
        "prune": {"metric": "reverse_order", "num_layers": 7},
        "finetune": {"objective": "distill", "distill_top_k": 64, "distill_hidden_weight": 0.1,
                     "dataset": "bundled:wikipedia-train", "format": "text", "packing": True,
                     "max_seq_len": 64, "batch_size": 4, "micro_batch_size": 2, "max_steps": 3,
                     "warmup_steps": 0, "learning_rate": 1e-4, "trainable_last_layers": 1},
        "evaluate": {"perplexity": {"dataset": "bundled:wikipedia-eval", "seq_len": 64, "max_windows": 2},
                     "compare_base": False},
    })
    infos: list[tuple[str, dict]] = []
    hooks = Hooks(log=lambda level, msg, data: infos.append((msg, dict(data))))
    result = run_pipeline(spec, resolve_model(spec.model), tmp_path, hooks)
    assert result["removed_layers"] == list(range(23, 30)) and result["num_layers_after"] == 23
    ft = result["finetune"]
    assert ft["steps"] == 3 and ft["num_layers"] == 23
    # The teacher is the 30-layer input model, not the pruned student.
    teacher = [d for m, d in infos if m.startswith("distilling from the teacher")]
    assert teacher and teacher[0]["teacher_layers"] == 30 and teacher[0]["top_k"] == 64
    for h in ft["history"]:
        assert h["kl"] > 0 and 0 < h["hidden"] < 2 and h["ce"] > 0
    # Cutting 7 of 30 layers moves the distribution far from the teacher's.
    assert ft["history"][0]["kl"] > 0.5
    assert result["metrics"]["after"]["perplexity"]["value"] > 1
    record = json.loads((tmp_path / "output" / "layerprune.json").read_text())
    assert record["spec"]["finetune"]["objective"] == "distill"
