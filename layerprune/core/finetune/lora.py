"""LoRA and QLoRA through peft: wrap, then export a merged plain model plus the adapter.

QLoRA's base is 4-bit NF4 (double quantisation, bf16 compute): merging into it would bake the
quantisation error into the weights, so the export reloads the base in bf16, applies the trained
adapter and merges there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from layerprune.core.errors import SpecError
from layerprune.core.spec import FinetuneSpec

ADAPTER_DIR = "adapter"


def lora_config(spec: FinetuneSpec) -> Any:
    from peft import LoraConfig, TaskType  # noqa: PLC0415 - peft (~13 s): lora/qlora jobs only

    return LoraConfig(r=spec.lora_r, lora_alpha=spec.lora_alpha, lora_dropout=spec.lora_dropout,
                      target_modules=list(spec.lora_target_modules), task_type=TaskType.CAUSAL_LM, bias="none")


def wrap_lora(model: nn.Module, spec: FinetuneSpec) -> nn.Module:
    """A peft model whose only trainable parameters are the LoRA adapters."""
    from peft import get_peft_model  # noqa: PLC0415 - peft (~13 s): lora/qlora jobs only

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in spec.lora_target_modules if t not in names]
    if missing:
        raise SpecError(
            f"lora_target_modules {missing} are not modules of this model (it has e.g. "
            f"{sorted(n for n in names if n.endswith(('proj', 'fc', 'attn', 'c_fc', 'dense')))[:8]})",
            param="finetune.lora_target_modules",
        )
    return get_peft_model(model, lora_config(spec))


def quantization_config() -> Any:
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def prepare_qlora(model: nn.Module, spec: FinetuneSpec) -> nn.Module:
    from peft import prepare_model_for_kbit_training  # noqa: PLC0415 - peft (~13 s): lora/qlora jobs only

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return wrap_lora(model, spec)


def export_merged(peft_model: Any, out_dir: Path, *, source_dir: Path, dtype: torch.dtype, quantized: bool,
                  device: torch.device | None = None) -> nn.Module:
    """Save the adapter under ``out_dir/adapter`` and the merged plain model in ``out_dir``."""
    from peft import PeftModel  # noqa: PLC0415 - peft (~13 s): lora/qlora jobs only

    out_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(out_dir / ADAPTER_DIR)
    if quantized:
        base = AutoModelForCausalLM.from_pretrained(source_dir, dtype=torch.bfloat16, trust_remote_code=False)
        if device is not None:
            base.to(device)
        merged = PeftModel.from_pretrained(base, out_dir / ADAPTER_DIR).merge_and_unload()
    else:
        merged = peft_model.merge_and_unload()
    merged = merged.to(dtype)
    merged.save_pretrained(out_dir, safe_serialization=True)
    return merged
