"""magnitude_l1 / magnitude_l2: how large a block's weights are (docs/methods.md §1).

Weights only: every parameter of the block except biases, norms included; embeddings, lm_head and
the final norm are never ranked. ``magnitude_l2`` under "paper" semantics sums the Frobenius norm
of each weight (homogeneous of degree 1: scaling a block by c scales its score by c); under
"reference_code" it sums squares without the root (the paper's released code; degree 2).

Both need no forward pass, so they are also computed straight from the safetensors files, one
tensor at a time (:func:`magnitude_scores_from_files`), without ever holding the model in memory.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import BinaryIO

import torch
from torch import nn
from transformers import AutoConfig

from layerprune.core.architecture import find_decoder_parts, meta_model
from layerprune.core.errors import ModelSourceError, SpecError
from layerprune.core.streaming import TensorEntry, layer_prefix_in_files, list_tensors


def is_scored_weight(name: str) -> bool:
    """Biases are not weights here (the paper's definition counts weight matrices and norms)."""
    return not name.endswith("bias")


# Elements converted to float64 at a time: bounds the extra memory of a large weight to 128 MB.
_CHUNK_ELEMENTS = 16 * 1024 * 1024


def tensor_magnitude(t: torch.Tensor, p: int, semantics: str) -> float:
    """One tensor's contribution: Σ|w| (p=1), ‖W‖_F (p=2, paper) or Σw² (p=2, reference_code).

    Summed in float64 (an fp32 sum of a few million terms is ~1e-5 low), a chunk at a time.
    """
    if p not in (1, 2):
        raise SpecError(f"magnitude order p must be 1 or 2, got {p}", param="prune.metric")
    flat = t.detach().reshape(-1)
    total = 0.0
    for start in range(0, flat.numel(), _CHUNK_ELEMENTS):
        chunk = flat[start : start + _CHUNK_ELEMENTS].double()
        total += float(chunk.abs().sum()) if p == 1 else float((chunk * chunk).sum())
    if p == 2 and semantics != "reference_code":
        return math.sqrt(total)
    return total


def magnitude_scores(model: nn.Module, p: int, semantics: str = "paper") -> list[float]:
    """Per current block of an in-memory model."""
    scores: list[float] = []
    for layer in find_decoder_parts(model).layers:
        total = 0.0
        for name, param in layer.named_parameters():
            if is_scored_weight(name):
                total += tensor_magnitude(param, p, semantics)
        scores.append(total)
    return scores


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def _read_tensor(fh: BinaryIO, entry: TensorEntry) -> torch.Tensor:
    """One tensor read into its own buffer with plain reads: unlike an mmap (safe_open), the file's
    pages never count towards this process's resident memory."""
    dtype = _DTYPES.get(entry.dtype)
    if dtype is None:
        raise ModelSourceError(f"{entry.name}: cannot score tensors of dtype {entry.dtype}", param="model")
    if entry.nbytes == 0:
        return torch.empty(entry.shape, dtype=dtype)
    buf = bytearray(entry.nbytes)
    fh.seek(entry.begin)
    if fh.readinto(buf) != entry.nbytes:
        raise ModelSourceError(f"{entry.file.name} is truncated at {entry.name}", param="model")
    return torch.frombuffer(buf, dtype=dtype).reshape(entry.shape)


def magnitude_scores_from_files(model_dir: Path, p: int, semantics: str = "paper") -> list[float]:
    """Per block, streaming tensors from the safetensors files one at a time (equals the in-memory scores).

    Which keys count is taken from a meta-device copy of the model (no memory): the parameter
    names of block i, biases excluded. Buffers that old checkpoints stored (rotary ``inv_freq``)
    are therefore ignored, as the in-memory score ignores them. Peak memory is one tensor's bytes
    plus a 128 MB float64 chunk.
    """
    model_dir = Path(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    parts = find_decoder_parts(meta_model(config))
    entries, _ = list_tensors(model_dir)
    # The files may spell the block prefix without the outer module ("h.0." on hub GPT-2).
    prefix = layer_prefix_in_files([e.name for e in entries], parts.layers_path + ".")
    wanted: dict[str, int] = {}
    for i, layer in enumerate(parts.layers):
        for name, _ in layer.named_parameters():
            if is_scored_weight(name):
                wanted[f"{prefix}{i}.{name}"] = i
    chosen = sorted((e for e in entries if e.name in wanted), key=lambda e: (str(e.file), e.begin))
    if len(chosen) != len(wanted):
        raise ModelSourceError(
            f"{model_dir}: found {len(chosen)} of the {len(wanted)} block weights in the safetensors files",
            param="model",
        )
    scores = [0.0] * len(parts.layers)
    for path in sorted({e.file for e in chosen}):
        with open(path, "rb") as fh:
            for entry in (e for e in chosen if e.file == path):
                scores[wanted[entry.name]] += tensor_magnitude(_read_tensor(fh, entry), p, semantics)
    return scores
