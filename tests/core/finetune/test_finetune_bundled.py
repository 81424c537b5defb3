"""Healing the real bundled model (SmolLM2-135M) pruned by 25%: the loss falls over a short run.
QLoRA's CUDA path runs here only where a CUDA GPU with bitsandbytes is present."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from layerprune.core.bundled import bundled_instructions
from layerprune.core.finetune import finetune_model
from layerprune.core.removal import remove_layers
from layerprune.core.spec import FinetuneSpec


@pytest.fixture(scope="module")
def pruned_bundled(bundled_dir, tmp_path_factory) -> Path:
    """SmolLM2-135M with its last 7 of 30 layers removed (reverse order, 25%), as saved by a prune job."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("pruned") / "smollm2-23"
    model = AutoModelForCausalLM.from_pretrained(bundled_dir, dtype=torch.bfloat16)
    remove_layers(model, list(range(23, 30)))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(bundled_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def instruction_file(tmp_path_factory) -> str:
    rows = [r for r in bundled_instructions() if len(r["input"]) + len(r["output"]) < 300][:8]
    path = tmp_path_factory.mktemp("instr") / "train.jsonl"
    path.write_text("".join(json.dumps({k: r[k] for k in ("instruction", "input", "output")}) + "\n" for r in rows))
    return str(path)


def _epoch_means(history: list[dict]) -> list[float]:
    by_epoch: dict[int, list[float]] = {}
    for h in history:
        by_epoch.setdefault(round(h["epoch"] + 0.4999), []).append(h["loss"])  # epoch 1 ends at 1.0
    return [sum(v) / len(v) for _, v in sorted(by_epoch.items())]


@pytest.mark.slow
def test_partial_healing_lowers_the_loss_on_the_pruned_bundled_model(tmp_path, pruned_bundled, instruction_file):
    spec = FinetuneSpec(dataset=instruction_file, batch_size=4, micro_batch_size=4, epochs=3, warmup_steps=0,
                        learning_rate=1e-4, max_seq_len=128, trainable_last_layers=3)
    res = finetune_model(pruned_bundled, spec, tmp_path / "out", tmp_path / "work")
    means = _epoch_means(res.history)
    assert len(means) == 3 and means[2] < means[0] * 0.9, means
    assert res.num_layers == 23 and res.steps == 6
    # lm_head (untied, 49152 x 576) + final norm + 3 layers of 3,540,096 parameters each
    assert res.trainable_params == 49152 * 576 + 576 + 3 * 3_540_096
    assert all(h["cached"] for h in res.history[2:])
    healed = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert healed.config.num_hidden_layers == len(healed.model.layers) == 23
    assert healed.config.tie_word_embeddings is False
    assert healed.dtype == torch.bfloat16


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None,
                    reason="QLoRA needs a CUDA GPU and bitsandbytes")
def test_qlora_trains_on_cuda_and_exports_a_merged_plain_model(tmp_path, pruned_bundled, instruction_file):
    spec = FinetuneSpec(method="qlora", dataset=instruction_file, batch_size=4, micro_batch_size=4, epochs=3,
                        warmup_steps=0, learning_rate=1e-3, max_seq_len=128)
    res = finetune_model(pruned_bundled, spec, tmp_path / "out", tmp_path / "work")
    means = _epoch_means(res.history)
    assert means[2] < means[0], means
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert merged.config.num_hidden_layers == 23 and "quantization_config" not in merged.config.to_dict()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").exists()
