"""core.finetune.lora: LoRA wrapping on a tiny model (only the adapters train), the export (the
merged plain model computes what the adapted one does, and each merged weight is
W + (alpha / r)·B·A written out here), and the QLoRA quantisation settings. (Training through the
loop: test_methods.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from layerprune.core.errors import SpecError
from layerprune.core.finetune.lora import ADAPTER_DIR, export_merged, quantization_config, wrap_lora
from layerprune.core.spec import FinetuneSpec
from tests.tiny import LAYERS, VOCAB, tiny_model
from tests.torch_threads import one_thread  # noqa: F401

pytest.importorskip("peft")

SPEC = FinetuneSpec(method="lora", lora_r=4, lora_alpha=8, lora_dropout=0.0,
                    lora_target_modules=["q_proj", "down_proj"])


def test_targets_that_are_not_modules_are_a_spec_error_naming_them() -> None:
    spec = SPEC.model_copy(update={"lora_target_modules": ["q_proj", "c_attn", "nope"]})
    with pytest.raises(SpecError, match=r"\['c_attn', 'nope'\] are not modules of this model") as err:
        wrap_lora(tiny_model("llama"), spec)
    assert err.value.param == "finetune.lora_target_modules"
    assert "down_proj" in err.value.message  # it says what the model does have


def test_only_the_adapters_of_the_target_modules_train() -> None:
    peft_model = wrap_lora(tiny_model("llama"), SPEC)
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert len(trainable) == 2 * 2 * LAYERS  # A and B of q_proj and down_proj in every block
    assert all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert all(".self_attn.q_proj." in n or ".mlp.down_proj." in n for n in trainable)
    a = dict(peft_model.named_parameters())[next(n for n in trainable if "lora_A" in n)]
    assert a.shape[0] == SPEC.lora_r


def test_the_merged_export_computes_what_the_adapted_model_does(tmp_path: Path, tiny_dirs) -> None:
    base = tiny_model("llama")
    originals = {n: p.detach().clone() for n, p in base.named_parameters()}
    peft_model = wrap_lora(base, SPEC)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained adapter: B is zero at initialisation, which would merge to nothing
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    peft_model.eval()
    ids = torch.randint(3, VOCAB, (2, 10), generator=gen)
    with torch.no_grad():
        adapted = peft_model(input_ids=ids).logits
        with peft_model.disable_adapter():
            plain = peft_model(input_ids=ids).logits
    modules = dict(peft_model.named_modules())
    lora_q = modules["base_model.model.model.layers.2.self_attn.q_proj"]
    a, b = lora_q.lora_A["default"].weight.detach().double(), lora_q.lora_B["default"].weight.detach().double()

    merged = export_merged(peft_model, tmp_path / "out", source_dir=tiny_dirs("llama"), dtype=torch.float32,
                           quantized=False)
    assert (tmp_path / "out" / ADAPTER_DIR / "adapter_config.json").is_file()
    assert any((tmp_path / "out" / ADAPTER_DIR).glob("adapter_model.*"))
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, adapted, rtol=1e-4, atol=1e-4)
    assert (adapted - plain).abs().max() > 1e-3  # the adapter matters: the comparison is not vacuous
    saved = {}
    for f in (tmp_path / "out").glob("*.safetensors"):
        saved.update(load_file(f))
    assert not any("lora" in k for k in saved)
    w0 = originals["model.layers.2.self_attn.q_proj.weight"].double()
    want = w0 + (SPEC.lora_alpha / SPEC.lora_r) * (b @ a)
    torch.testing.assert_close(saved["model.layers.2.self_attn.q_proj.weight"].double(), want, rtol=1e-5, atol=1e-6)
    # Modules without an adapter are saved as they were.
    assert torch.equal(saved["model.layers.2.mlp.up_proj.weight"], originals["model.layers.2.mlp.up_proj.weight"])


def test_qlora_quantises_to_nf4_with_double_quantisation_and_bf16_compute() -> None:
    config = quantization_config()
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
