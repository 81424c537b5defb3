"""Device, dtype and device-map choices on CUDA machines, with the CUDA runtime mocked (no GPU here).

What runs on a real GPU (bf16 kernels, accelerate's placement) is exercised on a CUDA machine;
these tests pin the decisions layerprune itself makes.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from layerprune.core.device import cuda_device_count, pick_device, pick_dtype
from layerprune.core.errors import ModelSourceError
from layerprune.core.loading import GPU_FILL_FRACTION, choose_device_map, weights_bytes


def fake_cuda(monkeypatch: pytest.MonkeyPatch, *, count: int, gib: float, bf16: bool = True) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index: SimpleNamespace(total_memory=int(gib * 2**30), name=f"fake{index}"))


def test_cpu_without_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("a real GPU is present")
    assert pick_device().type == "cpu" and pick_dtype("cpu") == torch.float32 and cuda_device_count() == 0


def test_cuda_picks_bf16_where_supported_else_fp16(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda(monkeypatch, count=1, gib=80)
    assert pick_device() == torch.device("cuda") and pick_dtype("cuda") == torch.bfloat16
    fake_cuda(monkeypatch, count=1, gib=16, bf16=False)  # e.g. a T4 or V100
    assert pick_dtype("cuda") == torch.float16


def test_device_map_one_gpu_multi_gpu_and_too_large(tiny_dirs, monkeypatch: pytest.MonkeyPatch) -> None:
    src: Path = tiny_dirs("llama")
    size = weights_bytes(src, torch.bfloat16)
    cuda0 = torch.device("cuda", 0)
    # Fits on one GPU: straight onto it, never through host memory.
    fake_cuda(monkeypatch, count=2, gib=80)
    assert choose_device_map(src, cuda0, torch.bfloat16) == {"": 0}
    assert choose_device_map(src, torch.device("cuda", 1), torch.bfloat16) == {"": 1}
    # Larger than the fill fraction of one GPU, several GPUs: spread over them.
    fake_cuda(monkeypatch, count=2, gib=size / GPU_FILL_FRACTION / 2**30 * 0.9)
    assert choose_device_map(src, cuda0, torch.bfloat16) == "auto"
    # One GPU, above the fill fraction but below its memory: try it on that GPU.
    fake_cuda(monkeypatch, count=1, gib=size / 2**30 * 1.1)
    assert choose_device_map(src, cuda0, torch.bfloat16) == {"": 0}
    # One GPU smaller than the weights themselves: a clear refusal naming the sizes.
    fake_cuda(monkeypatch, count=1, gib=size / 2**30 / 2)
    with pytest.raises(ModelSourceError, match="more than the only GPU") as err:
        choose_device_map(src, cuda0, torch.bfloat16)
    assert err.value.param == "model" and "bfloat16" in str(err.value)
    # CPU never gets a device map.
    assert choose_device_map(src, torch.device("cpu"), torch.float32) is None
