"""Which runs of removed blocks get a map, and which weight of the kept block before each takes it.

A run is a maximal contiguous range of removed blocks ``first … last``; its map folds into the
output projection of the MLP of block ``first − 1`` (the *site*). The fold is exact only when that
projection's output reaches the block's output additively and unchanged, which
:func:`check_additive` verifies on the real model instead of trusting a per-family table: a
post-MLP norm (Gemma 2/3, OLMo 2) or a residual multiplier fails it and is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from layerprune.core.errors import SpecError

PARAM = "prune.replace"

# Output projection of the MLP, relative to a block, per naming convention (Llama/Mistral/Qwen/Phi-3/
# OLMo 2/Gemma: down_proj; GPT-2: c_proj, a Conv1D; GPT-NeoX: dense_4h_to_h; OPT-style fc2; w2).
PROJECTION_NAMES = ("mlp.down_proj", "mlp.c_proj", "mlp.dense_4h_to_h", "mlp.fc2", "mlp.w2", "feed_forward.w2")


@dataclass(frozen=True)
class Run:
    first: int  # first removed block (numbering of the model the map is fitted on)
    last: int  # last removed block

    @property
    def kept(self) -> int:
        """The block whose MLP output projection takes the map."""
        return self.first - 1

    def to_dict(self) -> dict[str, int]:
        return {"first": self.first, "last": self.last, "kept": self.kept}


def runs_of(removed: Sequence[int]) -> list[Run]:
    """Maximal contiguous runs of ``removed`` (any order, no duplicates), sorted.

    A run starting at block 0 has no block before it to fold into: SpecError naming ``prune.replace``.
    """
    runs: list[Run] = []
    for i in sorted(set(removed)):
        if runs and runs[-1].last == i - 1:
            runs[-1] = Run(runs[-1].first, i)
        else:
            runs.append(Run(i, i))
    if runs and runs[0].first == 0:
        raise SpecError(
            f"replace 'linear' folds each removed run into the MLP of the block before it; the run "
            f"{runs[0].first}..{runs[0].last} starts at layer 0, which has none. Keep layer 0 "
            "(protect_layers: [0]) or use replace 'none'", param=PARAM)
    return runs


@dataclass(frozen=True)
class Site:
    block: int
    name: str  # module path relative to the block, e.g. "mlp.down_proj"
    module: nn.Module
    conv1d: bool  # GPT-2's Conv1D stores the weight as [in, out] (out = x·W + b)


def _out_features(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return module.out_features
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
        return int(module.nf)
    return None


def find_site(layers: nn.ModuleList, block: int, hidden: int) -> Site:
    """The MLP output projection of ``layers[block]`` (a Linear or Conv1D producing ``hidden`` features)."""
    layer = layers[block]
    for name in PROJECTION_NAMES:
        try:
            module = layer.get_submodule(name)
        except AttributeError:
            continue
        if _out_features(module) == hidden:
            return Site(block, name, module, conv1d=not isinstance(module, nn.Linear))
    raise SpecError(f"replace 'linear': no MLP output projection ({', '.join(PROJECTION_NAMES)}) producing "
                    f"{hidden} features in block {block} ({type(layer).__name__}); this architecture is not "
                    "supported, use replace 'none'", param=PARAM)


def _block_output(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out[0]


@torch.no_grad()
def check_additive(model: nn.Module, layers: nn.ModuleList, site: Site, input_ids: torch.Tensor) -> None:
    """Refuse unless adding δ to the projection's output adds exactly δ to the block's output.

    That is the condition under which ``block_out = a + m`` with ``m`` the projection's output, so
    ``m·T`` can be folded into the projection's weight. Checked with one short forward pair.
    """
    outs: list[torch.Tensor] = []
    delta: list[torch.Tensor] = []

    def on_proj(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor | None:
        if not delta:  # first pass: draw a perturbation of the output's own scale, leave the output be
            gen = torch.Generator(device="cpu").manual_seed(0)
            scale = output.float().pow(2).mean().sqrt().clamp_min(1e-3)
            delta.append((torch.randn(output.shape, generator=gen) * scale).to(output.device, output.dtype))
            return None
        return output + delta[0]

    def on_block(module: nn.Module, args: Any, output: Any) -> None:
        outs.append(_block_output(output).float())

    h1 = site.module.register_forward_hook(on_proj)
    h2 = layers[site.block].register_forward_hook(on_block)
    try:
        device = next(model.parameters()).device
        ids = input_ids[:1, :16].to(device)
        for _ in range(2):
            model(input_ids=ids, use_cache=False)
    finally:
        h1.remove()
        h2.remove()
    d = delta[0].float()
    err = (outs[1] - outs[0] - d).abs().max().item()
    # Allow the rounding of one add in the model's dtype; a norm or a multiplier in the way is off by O(|δ|).
    tol = 1e-4 if delta[0].dtype == torch.float32 else 3e-2
    if not err <= tol * float(outs[0].abs().max().item() + d.abs().max().item()):
        block = type(layers[site.block]).__name__
        raise SpecError(
            f"replace 'linear': in {block} the MLP output ({site.name}) does not reach the residual stream "
            f"unchanged (a norm or a scale sits between them, as in Gemma 2/3 and OLMo 2), so a linear map "
            f"cannot be folded into it exactly; use replace 'none' for this model", param=PARAM)
