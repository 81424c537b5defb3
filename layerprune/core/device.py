"""Pick the device and dtype: CUDA with bf16 where supported, else CPU with fp32."""

from __future__ import annotations

import torch


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def pick_dtype(device: torch.device | str) -> torch.dtype:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # bf16 matmuls on CPU are slow and lossy; fp32 keeps scores and losses exact enough to compare.
    return torch.float32


def cuda_device_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0
