"""Run a decoder's blocks by hand, the same way its own forward would.

Each family calls its blocks with different arguments (rotary position embeddings, one mask per
attention type, positional ``cache``/mask arguments on GPT-2). Rather than rebuild those per family,
one normal forward (``use_cache=False``) records every block's call with forward pre-hooks; a block
can then be re-invoked with a replaced hidden state (:meth:`LayerCall.run`). This is what lets the
``ppl`` metric run the suffix of the network from any layer's input without a full forward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from layerprune.core.architecture import find_decoder_parts


class _StopForward(Exception):  # noqa: N818 - control flow, not an error
    """Raised once the blocks needed have run, so the final norm and lm_head are not computed for nothing."""


@dataclass
class LayerCall:
    """How one block was called; :meth:`run` replays the call with another hidden state."""

    layer: nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    hidden_in_kwargs: bool

    def run(self, hidden: torch.Tensor) -> torch.Tensor:
        """The block's raw output for input ``hidden`` (moved to the block's device first)."""
        hidden = hidden.to(layer_device(self.layer))
        if self.hidden_in_kwargs:
            out = self.layer(*self.args, **{**self.kwargs, "hidden_states": hidden})
        else:
            out = self.layer(hidden, *self.args[1:], **self.kwargs)
        return block_output(out)


@dataclass
class Captured:
    """One forward over a batch: every block's call and its input ``x_i``."""

    calls: list[LayerCall] = field(default_factory=list)
    inputs: list[torch.Tensor] = field(default_factory=list)


def layer_device(layer: nn.Module) -> torch.device:
    for p in layer.parameters():
        return p.device
    return torch.device("cpu")


def input_device(model: nn.Module) -> torch.device:
    return find_decoder_parts(model).embeddings.weight.device


def block_output(out: Any) -> torch.Tensor:
    """The hidden state a block returns (transformers 5 returns a tensor; older code a tuple)."""
    if isinstance(out, torch.Tensor):
        return out
    return out[0]


def block_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


@contextlib.contextmanager
def autocast_for(model: nn.Module) -> Iterator[None]:
    """bf16 autocast on CUDA for fp32-loaded models; a no-op elsewhere (and for bf16-loaded ones)."""
    p = next(model.parameters())
    if p.device.type == "cuda" and p.dtype == torch.float32:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            yield
    else:
        yield


def run_blocks(
    model: nn.Module,
    input_ids: torch.Tensor,
    on_block: Callable[[int, tuple[Any, ...], dict[str, Any], torch.Tensor], None],
) -> None:
    """One forward through the blocks only, calling ``on_block(i, args, kwargs, output)`` per block.

    The forward stops right after the last block (no final norm, no lm_head: scoring never needs
    their output, and lm_head is the most expensive matmul of a small model).
    """
    layers = find_decoder_parts(model).layers
    last = len(layers) - 1
    handles = []

    def make_hook(i: int):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            on_block(i, args, kwargs, block_output(output))
            if i == last:
                raise _StopForward()

        return hook

    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_hook(make_hook(i), with_kwargs=True))
    _forward_until_stopped(model, input_ids, handles)


def capture(model: nn.Module, input_ids: torch.Tensor) -> Captured:
    """Record every block's call and input for one batch.

    Forward pre-hooks see each call before it runs; the forward stops before the last block runs,
    because nothing downstream of x_{L−1} is needed (removing layer L−1 evaluates the head on x_{L−1}).
    """
    layers = find_decoder_parts(model).layers
    last = len(layers) - 1
    result = Captured()
    handles = []

    def make_hook(i: int):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            # Keep the call's other arguments as they were (masks, position embeddings); the hidden
            # state is stored separately so the call can be replayed with another one.
            result.calls.append(LayerCall(module, tuple(args), dict(kwargs), hidden_in_kwargs=not args))
            result.inputs.append(block_input(args, kwargs).detach())
            if i == last:
                raise _StopForward()

        return hook

    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(make_hook(i), with_kwargs=True))
    _forward_until_stopped(model, input_ids, handles)
    return result


def _forward_until_stopped(model: nn.Module, input_ids: torch.Tensor, handles: list[Any]) -> None:
    """One no-grad forward that a hook may end early with _StopForward; the hooks are removed after."""
    try:
        with torch.no_grad(), autocast_for(model):
            model(input_ids=input_ids.to(input_device(model)), use_cache=False)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()


def batches(calibration: torch.Tensor, batch_size: int | None) -> list[torch.Tensor]:
    """Split [N, S] token ids into batches of ``batch_size`` rows (None: one batch of all rows)."""
    if calibration.dim() != 2:
        raise ValueError(f"calibration must be [num_samples, seq_len] token ids, got shape {tuple(calibration.shape)}")
    n = calibration.shape[0]
    size = n if batch_size is None else max(1, batch_size)
    return [calibration[s : s + size] for s in range(0, n, size)]
