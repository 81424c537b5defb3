"""Find the parts of a decoder-only causal LM by inspecting it, not by a per-family table.

A decoder is recognised by its list of blocks: the ``nn.ModuleList`` whose length equals the
config's layer count and whose entries share one class (``model.layers`` on Llama/Qwen/Gemma,
``transformer.h`` on GPT-2, ``gpt_neox.layers`` on GPT-NeoX). The final norm is the norm module
that the base model applies after the blocks; lm_head is ``get_output_embeddings()``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModelForCausalLM

from layerprune.core.errors import UnsupportedArchitectureError

# The layer count is read by one torch-free module (the API reads config.json with it too);
# re-exported here, where the model-surgery code looks for it.
from layerprune.core.layer_plan import LAYER_COUNT_KEYS, layer_count_key, num_layers_of, text_config  # noqa: F401

try:  # skips the (meaningless on meta) random init: 12 ms instead of 20 for the bundled model
    from transformers.initialization import no_init_weights
except ImportError:  # pragma: no cover - older transformers 5 releases
    no_init_weights = contextlib.nullcontext


@dataclass(frozen=True)
class DecoderParts:
    layers: nn.ModuleList
    layers_path: str  # dotted module path of the block list, e.g. "model.layers"
    final_norm: nn.Module | None
    final_norm_path: str | None
    lm_head: nn.Module
    lm_head_path: str
    embeddings: nn.Module


def _module_path(model: nn.Module, target: nn.Module) -> str:
    for name, mod in model.named_modules():
        if mod is target:
            return name
    raise UnsupportedArchitectureError("module not found in model", param="model")


def find_decoder_parts(model: nn.Module) -> DecoderParts:
    """Locate blocks, final norm, lm_head and input embeddings of a causal LM."""
    config = getattr(model, "config", None)
    if config is None:
        raise UnsupportedArchitectureError("not a Hugging Face model (no config)", param="model")
    n = num_layers_of(config)
    candidates: list[tuple[str, nn.ModuleList]] = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n and n > 0:
            if len({type(m) for m in mod}) == 1 and any(True for _ in mod[0].parameters()):
                candidates.append((name, mod))
    if not candidates:
        raise UnsupportedArchitectureError(
            f"unsupported architecture {type(model).__name__}: no list of {n} decoder blocks found", param="model"
        )
    # The shallowest matching list is the decoder trunk (vision towers etc. sit deeper or differ in length).
    layers_path, layers = min(candidates, key=lambda c: c[0].count("."))
    lm_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if lm_head is None:
        raise UnsupportedArchitectureError(
            f"unsupported architecture {type(model).__name__}: no output embeddings (not a causal LM)", param="model"
        )
    embeddings = model.get_input_embeddings()
    parent_path = layers_path.rsplit(".", 1)[0] if "." in layers_path else ""
    parent = model.get_submodule(parent_path) if parent_path else model
    final_norm, final_norm_path = None, None
    for attr in ("norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f"):
        mod = getattr(parent, attr, None)
        if isinstance(mod, nn.Module):
            final_norm = mod
            final_norm_path = f"{parent_path}.{attr}" if parent_path else attr
            break
    return DecoderParts(
        layers=layers,
        layers_path=layers_path,
        final_norm=final_norm,
        final_norm_path=final_norm_path,
        lm_head=lm_head,
        lm_head_path=_module_path(model, lm_head),
        embeddings=embeddings,
    )


def layer_param_count(layer: nn.Module) -> int:
    return sum(p.numel() for p in layer.parameters())


def count_params(model: nn.Module) -> int:
    """Unique parameters: a tensor shared by several modules (tied embeddings) counts once.

    The one parameter count of the project (job result, model card, CLI, dashboard all show it).
    It equals ``sum(p.numel() for p in model.parameters())`` of the loaded model, which
    transformers reports too: ``parameters()`` yields a shared tensor once. Skeletons from
    :func:`meta_model` are tied like loaded models, so counting one gives the same number.
    """
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def meta_model(config):  # type: ignore[no-untyped-def]
    """Instantiate a model from its config on the meta device: structure only, no memory."""
    with no_init_weights(), torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
        # Under no_init_weights transformers leaves tied weights (tie_word_embeddings) as two
        # tensors; a loaded model shares one. Tie here, or every count from a skeleton counts
        # SmolLM2's 28M embedding matrix twice (162.8M where transformers says 134.5M).
        model.tie_weights()
    return model
