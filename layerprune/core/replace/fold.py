"""Fold each fitted map into the pruned model's files, in place.

For ``nn.Linear`` (out = x·Wᵀ + b) the projection becomes W' = Tᵀ·W, b' = b·T; for GPT-2's Conv1D
(out = x·W + b) W' = W·T, b' = b·T. The products are taken in float64 from the tensors as stored
and rounded once to their own dtype. Shape and dtype do not change, so the new bytes overwrite the
old ones at the same offsets of the file :func:`~layerprune.core.streaming.stream_prune` wrote:
every other byte of the output stays what plain removal would have written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open

from layerprune.core.errors import SpecError
from layerprune.core.replace.plan import PARAM, Site
from layerprune.core.streaming import TensorEntry, layer_prefix_in_files, list_tensors


def folded(weight: torch.Tensor, bias: torch.Tensor | None, t: torch.Tensor, *, conv1d: bool
           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The projection's weight and bias with ``T`` applied to its output, in their own dtype."""
    t64 = t.to(weight.device, torch.float64)
    w64 = weight.to(torch.float64)
    w = (w64 @ t64) if conv1d else (t64.T @ w64)
    b = None if bias is None else (bias.to(torch.float64) @ t64).to(bias.dtype)
    return w.to(weight.dtype), b


def _overwrite(entry: TensorEntry, tensor: torch.Tensor) -> None:
    data = tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
    if len(data) != entry.nbytes:
        raise RuntimeError(f"folded {entry.name} has {len(data)} bytes, the file holds {entry.nbytes}")
    fd = os.open(entry.file, os.O_WRONLY)
    try:
        view, offset = memoryview(data), entry.begin
        while view:
            n = os.pwrite(fd, view, offset)
            view, offset = view[n:], offset + n
        os.fsync(fd)
    finally:
        os.close(fd)


def write_folds(out_dir: Path, module_prefix: str, keep: Sequence[int], folds: Sequence[tuple[Site, torch.Tensor]]
                ) -> list[str]:
    """Apply each ``(site, T)`` to the pruned model in ``out_dir`` (``keep[j]`` = old index of block j).

    ``module_prefix`` is the block list's module path + "." (``model.layers.``). Returns the weight
    keys written, as the files name them.
    """
    entries, _ = list_tensors(Path(out_dir))
    by_name = {e.name: e for e in entries}
    prefix = layer_prefix_in_files(list(by_name), module_prefix)
    new_index = {old: new for new, old in enumerate(keep)}
    written = []
    for site, t in folds:
        base = f"{prefix}{new_index[site.block]}.{site.name}."
        w_entry = by_name.get(base + "weight")
        if w_entry is None:
            raise SpecError(f"replace 'linear': the weights have no tensor {base}weight to fold into", param=PARAM)
        b_entry = by_name.get(base + "bias")
        with safe_open(str(w_entry.file), framework="pt") as fh:
            weight = fh.get_tensor(w_entry.name)
        bias = None
        if b_entry is not None:
            with safe_open(str(b_entry.file), framework="pt") as fh:
                bias = fh.get_tensor(b_entry.name)
        new_w, new_b = folded(weight, bias, t, conv1d=site.conv1d)
        _overwrite(w_entry, new_w)
        if b_entry is not None and new_b is not None:
            _overwrite(b_entry, new_b)
        written.append(w_entry.name)
    return written
