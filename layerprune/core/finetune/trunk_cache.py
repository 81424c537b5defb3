"""Frozen-trunk cache for partial healing.

With the trunk frozen, the hidden states entering the first trainable layer (the *cache point*)
depend only on the input ids. The first time a micro-batch is seen the model runs whole and a
forward pre-hook copies the cache point's input; later epochs run the model with the frozen
layers replaced by pass-throughs and a pre-hook that swaps in the stored hidden states. The model
itself still computes everything else its trainable layers need (position embeddings, attention
masks, per-layer mask kinds) from the input, so nothing family-specific is captured; that costs an
embedding lookup per step. Micro-batches keep a fixed composition for the whole run (only their
order changes per epoch) so each entry stays valid.

Entries live in memory, or in a numpy memmap file in ``work_dir`` once the whole cache would be
larger than ``memory_limit_bytes`` (env ``LAYERPRUNE_TRUNK_CACHE_MEMORY_BYTES``, default 2 GiB).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

DEFAULT_MEMORY_LIMIT = 2 * 1024**3


def memory_limit_from_env() -> int:
    return int(os.environ.get("LAYERPRUNE_TRUNK_CACHE_MEMORY_BYTES", DEFAULT_MEMORY_LIMIT))


# numpy has no bfloat16: such tensors are stored bit for bit as int16.
_STORAGE = {torch.float32: (np.float32, None), torch.float16: (np.float16, None),
            torch.bfloat16: (np.int16, torch.int16), torch.int32: (np.int32, None)}


class TrunkCache:
    """Hidden states at the cache point, one entry per micro-batch, of known shapes. The
    distillation teacher's targets use the same store under other ``name``s (their file names)."""

    def __init__(self, shapes: dict[int, tuple[int, ...]], device: torch.device, work_dir: Path | None,
                 memory_limit_bytes: int, name: str = "trunk_cache") -> None:
        self.shapes = shapes
        self.name = name
        self.device = device
        self.work_dir = work_dir
        self.memory_limit_bytes = memory_limit_bytes
        # The dtype is that of the first hidden states stored (under autocast it need not be the
        # parameters' dtype), so where the cache lives is decided on the first put.
        self.dtype: torch.dtype | None = None
        self.nbytes = 0
        self._mem: dict[int, torch.Tensor] = {}
        self._filled: set[int] = set()
        self.path: Path | None = None
        self._map: np.memmap | None = None
        self._offsets: dict[int, int] = {}

    def _allocate(self, dtype: torch.dtype) -> None:
        self.dtype = dtype
        itemsize = torch.empty((), dtype=dtype).element_size()
        self.nbytes = sum(int(np.prod(s)) * itemsize for s in self.shapes.values())
        if self.nbytes <= self.memory_limit_bytes:
            return
        if self.work_dir is None:
            raise ValueError("a memmap trunk cache needs a work_dir")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.work_dir / f"{self.name}.bin"
        np_dtype, _ = _STORAGE[dtype]
        offset = 0
        for i in sorted(self.shapes):
            self._offsets[i] = offset
            offset += int(np.prod(self.shapes[i]))
        # A fresh file every run: entries are refilled lazily, so a resumed run needs none.
        self._map = np.memmap(self.path, dtype=np_dtype, mode="w+", shape=(max(offset, 1),))

    @property
    def on_disk(self) -> bool:
        return self._map is not None

    @property
    def complete(self) -> bool:
        return len(self._filled) == len(self.shapes)

    def get(self, index: int) -> torch.Tensor | None:
        if index not in self._filled:
            return None
        if self._map is None:
            return self._mem[index]
        assert self.dtype is not None
        start = self._offsets[index]
        n = int(np.prod(self.shapes[index]))
        raw = torch.from_numpy(np.array(self._map[start : start + n]))
        view_as = _STORAGE[self.dtype][1]
        t = raw.view(self.dtype) if view_as is not None else raw
        return t.reshape(self.shapes[index]).to(self.device)

    def put(self, index: int, hidden: torch.Tensor) -> None:
        if tuple(hidden.shape) != tuple(self.shapes[index]):
            raise ValueError(f"cache entry {index}: shape {tuple(hidden.shape)} != {self.shapes[index]}")
        if self.dtype is None:
            self._allocate(hidden.dtype)
        assert self.dtype is not None
        hidden = hidden.detach().to(self.dtype)
        if self._map is None:
            self._mem[index] = hidden.clone()
        else:
            view_as = _STORAGE[self.dtype][1]
            flat = hidden.reshape(-1).cpu()
            data = (flat.view(view_as) if view_as is not None else flat).numpy()
            start = self._offsets[index]
            self._map[start : start + data.size] = data
        self._filled.add(index)

    def close(self) -> None:
        self._mem.clear()
        if self._map is not None:
            del self._map
            self._map = None
            if self.path is not None:
                self.path.unlink(missing_ok=True)


def _hidden_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


@contextlib.contextmanager
def capture_input(cache_point: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """While active, ``box["hidden"]`` receives the hidden states entering ``cache_point``."""
    box: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        box["hidden"] = _hidden_of(args, kwargs).detach()

    handle = cache_point.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield box
    finally:
        handle.remove()


def _passthrough(returns_tuple: int) -> Any:
    def forward(*args: Any, **kwargs: Any) -> Any:
        hidden = _hidden_of(args, kwargs)
        # Older-style blocks return tuples; keep the shape of what the model expects.
        return (hidden,) + (None,) * (returns_tuple - 1) if returns_tuple else hidden

    return forward


def layer_output_arity(layer: nn.Module, sample_output: Any) -> int:
    """0 when a block returns a tensor, else the length of the tuple it returns."""
    return len(sample_output) if isinstance(sample_output, tuple) else 0


@contextlib.contextmanager
def replay(frozen_layers: list[nn.Module], cache_point: nn.Module, hidden: torch.Tensor,
           returns_tuple: int) -> Iterator[None]:
    """Run the model with the frozen layers skipped and ``hidden`` fed into ``cache_point``."""

    def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if args:
            return (hidden,) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    handle = cache_point.register_forward_pre_hook(hook, with_kwargs=True)
    for layer in frozen_layers:
        layer.forward = _passthrough(returns_tuple)  # type: ignore[method-assign]
    try:
        yield
    finally:
        handle.remove()
        for layer in frozen_layers:
            del layer.forward  # the instance attribute; the class's forward shows again


@contextlib.contextmanager
def record_arity(layer: nn.Module | None) -> Iterator[dict[str, int]]:
    """Learn whether the blocks return tuples, from one real forward."""
    box: dict[str, int] = {}
    if layer is None:
        yield box
        return

    def hook(m: nn.Module, _a: tuple[Any, ...], output: Any) -> None:
        box["arity"] = layer_output_arity(m, output)

    handle = layer.register_forward_hook(hook)
    try:
        yield box
    finally:
        handle.remove()
