"""One parameter count everywhere: a tensor shared by two modules (tied embeddings) counts once.

The reference is ``sum(p.numel() for p in model.parameters())`` of the loaded model (torch yields
a shared parameter once; transformers reports the same number). Every count the project shows —
the job result (read off a structure-only skeleton), the evaluation's figures, the model card and
the CLI table — must equal it.
"""

from __future__ import annotations

import json

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from layerprune.cli.render import human_bytes, human_count, summary_table
from layerprune.core.architecture import count_params, meta_model
from layerprune.core.evaluate import weights_size_bytes
from layerprune.core.hooks import Hooks
from layerprune.core.pipeline import model_shape, run_pipeline
from layerprune.core.sources import resolve_model
from layerprune.core.spec import JobSpec
from layerprune.core.streaming import _param_counts


def _loaded_count(model_dir) -> int:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return sum(p.numel() for p in model.parameters())


def test_bundled_smollm2_counts_its_tied_embedding_once(bundled_dir):
    config = AutoConfig.from_pretrained(bundled_dir)
    assert config.tie_word_embeddings
    loaded = _loaded_count(bundled_dir)
    assert loaded == 134_515_008  # what transformers reports for SmolLM2-135M
    assert model_shape(bundled_dir) == (30, loaded)
    assert count_params(meta_model(config)) == loaded
    whole, removed = _param_counts(config, [3, 4])
    assert whole == loaded
    skeleton = meta_model(config)
    assert removed == sum(p.numel() for i in (3, 4) for p in skeleton.model.layers[i].parameters())


def test_tiny_tied_model_job_result_card_and_cli_agree(tiny_dirs, tmp_path):
    tiny = tiny_dirs("gpt2")  # GPT-2 ties lm_head to the token embeddings
    assert AutoConfig.from_pretrained(tiny).tie_word_embeddings
    before = _loaded_count(tiny)
    spec = JobSpec.model_validate({
        "model": str(tiny), "prune": {"metric": "reverse_order", "num_layers": 2},
        "evaluate": {"perplexity": {"dataset": "bundled:wikipedia-eval", "seq_len": 32, "max_windows": 1}},
    })
    source = resolve_model(spec.model, None, model_roots=[tiny.parent])
    result = run_pipeline(spec, source, tmp_path, Hooks())
    after = _loaded_count(tmp_path / "output")
    assert before > after
    # the job result (skeleton counts), the evaluation (loaded models) and the prune stage agree
    assert (result["params_before"], result["params_after"]) == (before, after)
    assert (result["metrics"]["before"]["params"], result["metrics"]["after"]["params"]) == (before, after)
    assert (result["prune"]["params_before"], result["prune"]["params_after"]) == (before, after)
    # the model card and the record beside the weights
    card = (tmp_path / "output" / "README.md").read_text()
    assert f"- Parameters: {before} before, {after} after" in card
    record = json.loads((tmp_path / "output" / "layerprune.json").read_text())
    assert record["prune"]["params_before"] == before
    # the CLI's before/after table
    row = next(line for line in summary_table(result).splitlines() if line.startswith("parameters"))
    assert row.split()[1:3] == [human_count(before), human_count(after)]


def test_prune_only_job_reports_both_sizes(tiny_dirs, tmp_path):
    tiny = tiny_dirs("gpt2")
    spec = JobSpec.model_validate({"model": str(tiny), "prune": {"metric": "reverse_order", "num_layers": 2}})
    result = run_pipeline(spec, resolve_model(spec.model, None, model_roots=[tiny.parent]), tmp_path, Hooks())
    out = tmp_path / "output"
    assert result["size_bytes_before"] == weights_size_bytes(tiny) > 0
    assert result["size_bytes_after"] == weights_size_bytes(out) < result["size_bytes_before"]
    row = next(line for line in summary_table(result).splitlines() if line.startswith("size on disk"))
    assert human_bytes(result["size_bytes_before"]) in row and " - " not in row
    card = (out / "README.md").read_text()
    assert (f"- Weights on disk: {human_bytes(result['size_bytes_before'])} before, "
            f"{human_bytes(result['size_bytes_after'])} after") in card


def test_an_untied_copy_counts_both_matrices(tiny_dirs, tmp_path):
    """Healing lm_head unties it (finetune.methods): the saved model stores two matrices, and the
    skeleton read from its config must count both, as the loaded model does."""
    from layerprune.core.finetune.methods import untie_embeddings

    tiny = tiny_dirs("gpt2")
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    tied = sum(p.numel() for p in model.parameters())
    assert untie_embeddings(model)
    model.save_pretrained(tmp_path)
    loaded = _loaded_count(tmp_path)
    assert loaded == tied + model.get_input_embeddings().weight.numel()
    assert model_shape(tmp_path)[1] == loaded
