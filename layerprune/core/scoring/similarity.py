"""block_influence (ShortGPT) and angular distance (Gromov et al.): how much a block changes its input.

Both come from ONE forward per calibration batch: a forward hook on every block sees the block's
input x_i and raw output x_{i+1} (not ``output_hidden_states``, whose last entry is after the final
norm on Llama) and reduces them at once, so no hidden state outlives its block.

* block_influence, "paper": 1 − mean over tokens of cos(x_i[t], x_{i+1}[t]), every layer scored.
* block_influence, "reference_code": 1 − ONE cosine of the [windows, seq, hidden] tensors of the whole
  calibration set flattened together (dot products and squared norms summed over batches in
  float64); the last layer gets no score (None) and is therefore never chosen, as in the paper's
  released code.
* angular, block of n layers starting at ℓ: arccos(cos(x_ℓ[last], x_{ℓ+n}[last])) / π averaged
  over samples; one score per start ℓ = 0..L−n.

The cosines are taken in float64 (the activations are converted as they come; fp32 loses digits
where a cosine is close to 1, and arccos near 1 magnifies them).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from layerprune.core.architecture import find_decoder_parts
from layerprune.core.errors import SpecError
from layerprune.core.hooks import NO_HOOKS, Hooks
from layerprune.core.scoring.capture import batches, block_input, run_blocks


def block_influence_scores(
    model: nn.Module,
    calibration: torch.Tensor,
    *,
    semantics: str = "paper",
    hooks: Hooks = NO_HOOKS,
    batch_size: int | None = None,
) -> list[float | None]:
    num_layers = len(find_decoder_parts(model).layers)
    # "paper": Σ over tokens of 1 − cos. "reference_code": Σ x_i·x_{i+1}, Σ‖x_i‖², Σ‖x_{i+1}‖² over
    # every element of every window, so the one cosine of all windows flattened together is formed
    # at the end without ever holding their activations. float64 throughout: the first token's
    # activations are ~300× the median on SmolLM2, so that cosine sits at 1 − 1e-4 and an fp32
    # cosine loses a quarter of the score.
    totals = [0.0] * num_layers
    dots = [0.0] * num_layers
    norms_in = [0.0] * num_layers
    norms_out = [0.0] * num_layers
    tokens = 0
    chunks = batches(calibration, batch_size)
    for b, ids in enumerate(chunks):
        hooks.check()

        def on_block(i: int, args: tuple[Any, ...], kwargs: dict[str, Any], out: torch.Tensor) -> None:
            inputs = block_input(args, kwargs)
            # One window at a time, so the float64 copies stay one window's size whatever the batch.
            for row in range(inputs.shape[0]):
                x_in = inputs[row].double()
                x_out = out[row].double().to(x_in.device)
                if semantics == "reference_code":
                    dots[i] += float((x_in * x_out).sum())
                    norms_in[i] += float((x_in * x_in).sum())
                    norms_out[i] += float((x_out * x_out).sum())
                else:
                    cos = torch.nn.functional.cosine_similarity(x_in, x_out, dim=-1)  # [seq]
                    totals[i] += float((1.0 - cos).sum())

        run_blocks(model, ids, on_block)
        tokens += ids.numel()
        hooks.progress(b + 1, len(chunks), f"block_influence: batch {b + 1}/{len(chunks)}")
    if semantics != "reference_code":
        return [t / tokens for t in totals]
    scores: list[float | None] = []
    for i in range(num_layers):
        denominator = math.sqrt(norms_in[i]) * math.sqrt(norms_out[i])
        scores.append(1.0 - dots[i] / denominator if denominator > 0 else 0.0)
    scores[-1] = None
    return scores


def angular_scores(
    model: nn.Module,
    calibration: torch.Tensor,
    *,
    block_size: int,
    hooks: Hooks = NO_HOOKS,
    batch_size: int | None = None,
) -> list[float]:
    num_layers = len(find_decoder_parts(model).layers)
    n = block_size
    if not 1 <= n < num_layers:
        raise SpecError(f"angular needs a block of 1..{num_layers - 1} layers, got {n}", param="prune.num_layers")
    totals = [0.0] * (num_layers - n + 1)
    samples = 0
    chunks = batches(calibration, batch_size)
    for b, ids in enumerate(chunks):
        hooks.check()
        # x_0..x_L at the last token only: [batch, hidden] each, small enough to keep.
        last: list[torch.Tensor | None] = [None] * (num_layers + 1)

        def on_block(
            i: int, args: tuple[Any, ...], kwargs: dict[str, Any], out: torch.Tensor, last: list = last
        ) -> None:
            last[i] = block_input(args, kwargs)[:, -1, :].double().cpu()
            last[i + 1] = out[:, -1, :].double().cpu()

        run_blocks(model, ids, on_block)
        for start in range(num_layers - n + 1):
            a, z = last[start], last[start + n]
            assert a is not None and z is not None
            cos = torch.nn.functional.cosine_similarity(a, z, dim=-1).clamp(-1.0, 1.0)
            totals[start] += float((torch.arccos(cos) / math.pi).sum())
        samples += ids.shape[0]
        hooks.progress(b + 1, len(chunks), f"angular: batch {b + 1}/{len(chunks)}")
    return [t / samples for t in totals]
