"""Load a checked model directory for scoring or training.

Never with ``trust_remote_code``; safetensors only; CPU fp32 or CUDA bf16 (core.device) unless
told otherwise; spread over every GPU (``device_map="auto"``) when the weights would not fit
on one. The model comes back in eval mode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from layerprune.core.device import cuda_device_count, pick_device, pick_dtype
from layerprune.core.errors import ModelSourceError
from layerprune.core.sources import check_model_dir
from layerprune.core.streaming import list_tensors

# Leave room on the GPU for activations, gradients of a few layers and the CUDA context.
GPU_FILL_FRACTION = 0.8


def weights_bytes(local_dir: Path, dtype: torch.dtype) -> int:
    """Size of the model's weights once loaded in ``dtype`` (from safetensors headers only)."""
    elements = 0
    for entry in list_tensors(Path(local_dir))[0]:
        n = 1
        for d in entry.shape:
            n *= d
        elements += n
    return elements * torch.empty((), dtype=dtype).element_size()


def choose_device_map(local_dir: Path, device: torch.device, dtype: torch.dtype) -> str | dict[str, Any] | None:
    """``"auto"`` when the model is larger than one GPU and there are several; else the GPU itself.

    A model whose weights alone exceed the only GPU is refused here, with the sizes, rather than
    by an out-of-memory error halfway through loading.
    """
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).total_memory
    needed = weights_bytes(local_dir, dtype)
    if needed > total * GPU_FILL_FRACTION:
        if cuda_device_count() > 1:
            return "auto"
        if needed > total:
            raise ModelSourceError(
                f"the model's weights need {needed / 2**30:.1f} GiB in {str(dtype).removeprefix('torch.')}, more "
                f"than the only GPU's {total / 2**30:.1f} GiB; run it on a worker with more or larger GPUs",
                param="model")
    # Load straight onto the GPU rather than through host memory.
    return {"": index}


def load_tokenizer(local_dir: Path):  # type: ignore[no-untyped-def]
    """The directory's tokenizer, or None when it ships none."""
    local_dir = Path(local_dir)
    if not any(local_dir.glob("tokenizer*")) and not (local_dir / "vocab.json").exists():
        return None
    return AutoTokenizer.from_pretrained(local_dir, trust_remote_code=False)


def load_model(local_dir: Path, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
               device_map: str | dict[str, Any] | None = None):  # type: ignore[no-untyped-def]
    """Load ``(model, tokenizer)`` from a model directory (tokenizer None if it has none)."""
    local_dir = Path(local_dir)
    check_model_dir(local_dir)
    device = torch.device(device) if device is not None else pick_device()
    dtype = dtype or pick_dtype(device)
    if device_map is None:
        device_map = choose_device_map(local_dir, device, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            local_dir, dtype=dtype, trust_remote_code=False, use_safetensors=True, device_map=device_map
        )
    except OSError as exc:
        raise ModelSourceError(f"cannot load the model in {local_dir}: {exc}", param="model") from exc
    if device_map is None:
        model.to(device)
    model.eval()
    return model, load_tokenizer(local_dir)
