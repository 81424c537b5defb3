"""A prune + evaluate job with generative tasks on a tiny model: results, deltas, card, uploaded train split."""

from __future__ import annotations

import json

from layerprune.core.hooks import Hooks
from layerprune.core.pipeline import run_pipeline
from layerprune.core.sources import resolve_model
from layerprune.core.spec import JobSpec


def test_generative_tasks_run_in_a_job_with_deltas_and_card(tiny_root, tmp_path):
    train = tmp_path / "gsm8k_train.jsonl"
    train.write_text("".join(json.dumps({"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"})
                             + "\n" for i in range(8)))
    spec = JobSpec.model_validate({
        "model": str(tiny_root / "tiny"), "prune": {"metric": "reverse_order", "num_layers": 2},
        "evaluate": {"tasks": ["gsm8k", "nq_open", "lambada_openai"], "limit": 2, "batch_size": 2,
                     "gsm8k_train": "file_train"}})
    source = resolve_model(spec.model, None, model_roots=[tiny_root])
    result = run_pipeline(spec, source, tmp_path / "work", Hooks(), dataset_paths={"file_train": train})
    metrics = json.loads(json.dumps(result["metrics"]))  # JSON all the way
    for side in ("before", "after"):
        tasks = metrics[side]["tasks"]
        assert list(tasks) == ["gsm8k", "nq_open", "lambada_openai"]
        assert set(tasks["gsm8k"]["higher_is_better"]) == {"exact_match,strict-match", "exact_match,flexible-extract"}
        assert tasks["nq_open"]["n"] == 2 and tasks["lambada_openai"]["perplexity"] > 1
        assert tasks["lambada_openai"]["higher_is_better"] == {"acc": True, "perplexity": False}
    deltas = metrics["deltas"]["tasks"]
    assert "ratio" in deltas["lambada_openai"]["perplexity"]
    assert set(deltas["nq_open"]) == {"exact_match,remove_whitespace"}
    card = (tmp_path / "work" / "output" / "README.md").read_text()
    # The card names tasks and metrics as the CLI and the dashboard do (core.units' one table).
    assert "| LAMBADA | perplexity | lower |" in card and "| GSM8K | exact match (strict-match) | higher |" in card
