"""Frozen-trunk cache: the same losses as the uncached path, in memory and memory-mapped.

Tolerance: per-step losses and validation loss agree within 1e-5 relative (fp32 on CPU; in
practice they are bit-equal because the trainable layers see identical inputs).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from layerprune.core.finetune import finetune_model
from layerprune.core.finetune.trunk_cache import TrunkCache
from layerprune.core.spec import FinetuneSpec
from tests.tiny import tiny_tokenizer

REL = 1e-5


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> str:
    from layerprune.core.bundled import bundled_text

    path = tmp_path_factory.mktemp("cachedata") / "train.txt"
    path.write_text("\n\n".join(t[:300] for t in bundled_text("wikipedia-train")[:24]))
    return str(path)


def run(src: Path, tmp: Path, name: str, data: str, **kw):
    spec = FinetuneSpec(dataset=data, format="text", batch_size=8, micro_batch_size=4, epochs=3, warmup_steps=1,
                        learning_rate=3e-3, max_seq_len=48, validation_fraction=0.2, **kw)
    return finetune_model(src, spec, tmp / f"out-{name}", tmp / f"work-{name}")


def assert_same_run(a, b, out_a: Path, out_b: Path) -> None:
    assert len(a.history) == len(b.history) == a.steps
    for ha, hb in zip(a.history, b.history, strict=True):
        assert ha["loss"] == pytest.approx(hb["loss"], rel=REL)
    assert a.val_loss == pytest.approx(b.val_loss, rel=REL)
    wa, wb = load_file(str(out_a / "model.safetensors")), load_file(str(out_b / "model.safetensors"))
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-6), k


@pytest.mark.parametrize("family,k", [("llama", 2), ("llama", 0), ("gpt2", 1)])
def test_cached_losses_equal_uncached(tmp_path, tiny_dirs, text_file, family, k):
    src = tiny_dirs(family)
    cached = run(src, tmp_path, "c", text_file, trainable_last_layers=k, cache_trunk=True)
    plain = run(src, tmp_path, "p", text_file, trainable_last_layers=k, cache_trunk=False)
    assert_same_run(cached, plain, tmp_path / "out-c", tmp_path / "out-p")
    per_epoch = cached.steps // 3
    assert not any(h["cached"] for h in cached.history[:per_epoch])
    assert all(h["cached"] for h in cached.history[per_epoch:])
    assert not any(h["cached"] for h in plain.history)
    assert cached.timings["trunk_cache_bytes"] > 0


def test_cache_with_per_layer_sliding_masks(tmp_path, text_file):
    # Gemma2 alternates sliding-window and full attention by layer; a window shorter than the
    # sequence makes the two masks differ, and the cache must still feed each layer its own.
    from tests.tiny import tiny_model

    model = tiny_model("gemma2")
    model.config.sliding_window = 8
    src = tmp_path / "gemma2"
    model.save_pretrained(src)
    tiny_tokenizer().save_pretrained(src)
    assert AutoConfig.from_pretrained(src).sliding_window == 8
    cached = run(src, tmp_path, "c", text_file, trainable_last_layers=3, cache_trunk=True)
    plain = run(src, tmp_path, "p", text_file, trainable_last_layers=3, cache_trunk=False)
    assert_same_run(cached, plain, tmp_path / "out-c", tmp_path / "out-p")
    AutoModelForCausalLM.from_pretrained(tmp_path / "out-c")


def test_memory_mapped_cache_gives_the_same_losses(tmp_path, tiny_dirs, text_file, monkeypatch):
    src = tiny_dirs("llama")
    plain = run(src, tmp_path, "p", text_file, trainable_last_layers=2, cache_trunk=False)
    monkeypatch.setenv("LAYERPRUNE_TRUNK_CACHE_MEMORY_BYTES", "0")
    seen: list[bool] = []

    from layerprune.core.hooks import Hooks

    def log(level, message, data):
        if message == "frozen-trunk cache":
            seen.append(data["on_disk"])

    spec = FinetuneSpec(dataset=text_file, format="text", batch_size=8, micro_batch_size=4, epochs=3, warmup_steps=1,
                        learning_rate=3e-3, max_seq_len=48, validation_fraction=0.2, trainable_last_layers=2)
    mapped = finetune_model(src, spec, tmp_path / "out-m", tmp_path / "work-m", Hooks(log=log))
    assert seen == [True]
    assert not (tmp_path / "work-m" / "trunk_cache.bin").exists()  # removed once training ends
    assert_same_run(mapped, plain, tmp_path / "out-m", tmp_path / "out-p")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_trunk_cache_round_trips_in_memory_and_on_disk(tmp_path, dtype):
    shapes = {0: (2, 3, 4), 1: (1, 5, 4)}
    values = {i: torch.randn(s).to(dtype) for i, s in shapes.items()}
    for limit in (10**9, 0):
        cache = TrunkCache(shapes, torch.device("cpu"), tmp_path, limit)
        assert cache.get(0) is None
        for i, v in values.items():
            cache.put(i, v)
        assert cache.on_disk == (limit == 0) and cache.dtype == dtype
        for i, v in values.items():
            got = cache.get(i)
            assert got is not None and got.dtype == dtype and torch.equal(got, v)
        with pytest.raises(ValueError):
            cache.put(0, torch.zeros(1, 1, 4))
        cache.close()
    assert json.dumps(cache.nbytes)


def test_bf16_mixed_precision_keeps_frozen_tensors_and_cache_equivalence(tmp_path, text_file):
    # The CUDA recipe (bf16 weights, fp32 trainable master weights, autocast) run on CPU.
    from tests.tiny import save_tiny

    src = save_tiny(tmp_path / "bf16", "llama", dtype=torch.bfloat16)
    spec = FinetuneSpec(dataset=text_file, format="text", batch_size=8, micro_batch_size=4, epochs=2, warmup_steps=0,
                        learning_rate=1e-3, max_seq_len=48, trainable_last_layers=2)
    seen: list[str] = []
    from layerprune.core.hooks import Hooks

    hooks = Hooks(log=lambda level, msg, data: seen.append(data.get("dtype", "")) if msg == "frozen-trunk cache" else None)
    cached = finetune_model(src, spec, tmp_path / "out-c", tmp_path / "work-c", hooks, dtype=torch.bfloat16)
    plain = finetune_model(src, spec.model_copy(update={"cache_trunk": False}), tmp_path / "out-p", tmp_path / "work-p",
                           dtype=torch.bfloat16)
    assert seen == ["torch.bfloat16"]
    for ha, hb in zip(cached.history, plain.history, strict=True):
        assert ha["loss"] == pytest.approx(hb["loss"], rel=REL)
    before, after = load_file(str(src / "model.safetensors")), load_file(str(tmp_path / "out-c" / "model.safetensors"))
    trainable = ("lm_head.", "model.norm.", "model.layers.6.", "model.layers.7.")
    assert all(v.dtype == torch.bfloat16 for v in after.values())
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith(trainable))
    assert all(not torch.equal(before[k], after[k]) for k in before if k.startswith(trainable) and "norm" not in k)
