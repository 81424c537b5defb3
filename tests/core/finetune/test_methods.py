"""Trainable sets of each healing method on tiny models: exactly the right tensors change, frozen
ones stay bit-identical; tied embeddings are untied for partial; merged LoRA is a plain model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from layerprune.core.errors import SpecError
from layerprune.core.finetune import finetune_model
from layerprune.core.finetune.methods import prepare_partial, trainable_named_parameters
from layerprune.core.spec import FinetuneSpec
from tests.tiny import tiny_model, tiny_tokenizer


def arithmetic_rows(n: int = 16) -> list[dict[str, str]]:
    return [{"instruction": "Add the numbers.", "input": f"{i} and {i + 3}", "output": f"The answer is {2 * i + 3}."}
            for i in range(n)]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("ftdata") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in arithmetic_rows()))
    return str(path)


def quick_spec(data_file: str, **kw) -> FinetuneSpec:
    base = dict(dataset=data_file, batch_size=8, micro_batch_size=4, max_steps=2, warmup_steps=0,
                learning_rate=1e-2, max_seq_len=160, lora_dropout=0.0)
    base.update(kw)
    return FinetuneSpec(**base)


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def changed_keys(src: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> set[str]:
    assert set(src) == set(out)
    return {k for k in src if not torch.equal(src[k], out[k])}


def llama_partial_expected(keys: set[str], k: int, lm_head: bool = True) -> set[str]:
    layers = {f"model.layers.{i}." for i in range(8 - k, 8)}
    want = {"model.norm.weight"} | ({"lm_head.weight"} if lm_head else set())
    return want | {key for key in keys if any(key.startswith(p) for p in layers)}


@pytest.mark.parametrize("k", [0, 1, 3])
def test_partial_trains_exactly_lm_head_norm_and_last_k_layers(tmp_path, tiny_dirs, data_file, k):
    src_dir = tiny_dirs("llama")
    res = finetune_model(src_dir, quick_spec(data_file, trainable_last_layers=k), tmp_path / "out", tmp_path / "work")
    src, out = tensors(src_dir), tensors(tmp_path / "out")
    assert changed_keys(src, out) == llama_partial_expected(set(src), k)
    model = tiny_model("llama")
    assert res.trainable_params == sum(v.numel() for key, v in src.items()
                                       if key in llama_partial_expected(set(src), k))
    assert res.total_params == sum(p.numel() for p in model.parameters())
    assert res.method == "partial" and res.steps == 2 and res.num_layers == 8


def test_partial_with_frozen_lm_head_changes_only_norm_and_layers(tmp_path, tiny_dirs, data_file):
    src_dir = tiny_dirs("llama")
    finetune_model(src_dir, quick_spec(data_file, trainable_last_layers=1, train_lm_head=False),
                   tmp_path / "out", tmp_path / "work")
    src, out = tensors(src_dir), tensors(tmp_path / "out")
    assert changed_keys(src, out) == llama_partial_expected(set(src), 1, lm_head=False)


def test_trainable_names_of_partial_are_exact():
    model = tiny_model("llama")
    plan = prepare_partial(model, FinetuneSpec(trainable_last_layers=2))
    names = {n for n, _ in trainable_named_parameters(model)}
    expected = {"lm_head.weight", "model.norm.weight"} | {
        n for n, _ in model.named_parameters() if n.startswith(("model.layers.6.", "model.layers.7."))}
    assert names == expected
    assert plan.cache_point is model.model.layers[6] and len(plan.frozen_layers) == 6
    plan0 = prepare_partial(tiny_model("llama"), FinetuneSpec(trainable_last_layers=0))
    assert isinstance(plan0.cache_point, nn.Module) and len(plan0.frozen_layers) == 8
    with pytest.raises(SpecError) as e:
        prepare_partial(tiny_model("llama"), FinetuneSpec(trainable_last_layers=9))
    assert e.value.param == "finetune.trainable_last_layers"


def test_partial_unties_tied_embeddings_and_leaves_the_input_embedding_unchanged(tmp_path, tiny_dirs, data_file):
    src_dir = tiny_dirs("gemma2")
    assert AutoConfig.from_pretrained(src_dir).tie_word_embeddings
    finetune_model(src_dir, quick_spec(data_file, trainable_last_layers=1), tmp_path / "out", tmp_path / "work")
    src, out = tensors(src_dir), tensors(tmp_path / "out")
    assert "lm_head.weight" not in src and "lm_head.weight" in out
    assert torch.equal(src["model.embed_tokens.weight"], out["model.embed_tokens.weight"])
    assert not torch.equal(out["lm_head.weight"], out["model.embed_tokens.weight"])
    assert json.loads((tmp_path / "out" / "config.json").read_text())["tie_word_embeddings"] is False
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert reloaded.lm_head.weight.data_ptr() != reloaded.model.embed_tokens.weight.data_ptr()
    assert torch.equal(reloaded.lm_head.weight, out["lm_head.weight"])
    frozen = {k for k in src if not k.startswith(("model.layers.7.", "model.norm.", "model.embed_tokens."))}
    assert all(torch.equal(src[k], out[k]) for k in frozen)


def test_full_changes_every_tensor(tmp_path, tiny_dirs, data_file):
    src_dir = tiny_dirs("llama")
    res = finetune_model(src_dir, quick_spec(data_file, method="full", learning_rate=1e-3), tmp_path / "out",
                         tmp_path / "work")
    src, out = tensors(src_dir), tensors(tmp_path / "out")
    assert changed_keys(src, out) == set(src)
    assert res.trainable_params == res.total_params


def _pruned_tiny(path: Path, keep: int) -> Path:
    model = tiny_model("llama")
    model.model.layers = nn.ModuleList(list(model.model.layers)[:keep])
    model.config.num_hidden_layers = keep
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def test_lora_changes_only_target_projections_and_merges_into_a_plain_pruned_model(tmp_path, data_file):
    src_dir = _pruned_tiny(tmp_path / "pruned", keep=6)
    spec = quick_spec(data_file, method="lora", learning_rate=1e-2)
    res = finetune_model(src_dir, spec, tmp_path / "out", tmp_path / "work")
    src, out = tensors(src_dir), tensors(tmp_path / "out")
    targets = tuple(f".{m}.weight" for m in spec.lora_target_modules)
    assert changed_keys(src, out) == {k for k in src if k.endswith(targets)}
    assert res.trainable_params == 6 * sum(spec.lora_r * (i + o) for i, o in
                                           [(64, 64), (64, 32), (64, 32), (64, 64), (64, 128), (64, 128), (128, 64)])
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert type(merged).__name__ == "LlamaForCausalLM"
    assert merged.config.num_hidden_layers == len(merged.model.layers) == 6
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").exists()
    # The adapter applied to the source gives the merged model's logits.
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(src_dir)
    with_adapter = PeftModel.from_pretrained(base, tmp_path / "out" / "adapter").eval()
    ids = torch.tensor([[1, 5, 9, 33, 2]])
    with torch.no_grad():
        assert torch.allclose(with_adapter(ids).logits, merged.eval()(ids).logits, atol=1e-5)


def test_lora_target_modules_that_do_not_exist_name_the_field(tmp_path, tiny_dirs, data_file):
    with pytest.raises(SpecError) as e:
        finetune_model(tiny_dirs("gpt2"), quick_spec(data_file, method="lora"), tmp_path / "out", tmp_path / "w")
    assert e.value.param == "finetune.lora_target_modules"


def test_qlora_without_cuda_is_refused_naming_the_method(tmp_path, tiny_dirs, data_file):
    from layerprune.core.errors import DeviceUnavailableError

    with pytest.raises(DeviceUnavailableError) as e:
        finetune_model(tiny_dirs("llama"), quick_spec(data_file, method="qlora"), tmp_path / "out", tmp_path / "w",
                       device="cpu")
    assert e.value.param == "finetune.method" and not (tmp_path / "out").exists()


def test_too_many_trainable_layers_is_refused_before_training(tmp_path, tiny_dirs, data_file):
    with pytest.raises(SpecError) as e:
        finetune_model(tiny_dirs("llama"), quick_spec(data_file, trainable_last_layers=9), tmp_path / "out",
                       tmp_path / "w")
    assert e.value.param == "finetune.trainable_last_layers"
