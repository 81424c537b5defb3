"""Remove decoder layers from a loaded Hugging Face causal LM, in place (docs/methods.md §2).

A naive ``del model.layers[i]`` leaves every later attention module with its old ``layer_idx``
(the KV cache then writes layer 7's keys into slot 8: transformers issue 30508) and a config
whose per-layer lists (``layer_types`` on Qwen2/Gemma2/Gemma3) no longer match the layer count,
which fails to load. :func:`remove_layers` rebuilds the list, renumbers the kept layers and
fixes the config; :func:`cut_layer_config` is shared with the streaming path so both write the
same config.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from torch import nn

from layerprune.core.architecture import (
    find_decoder_parts,
    layer_count_key,
    meta_model,
    num_layers_of,
    text_config,
)
from layerprune.core.errors import SpecError, UnsupportedArchitectureError

# Attributes that hold a module's own position in the block list (attention modules use
# ``layer_idx`` to address their slot in the KV cache).
INDEX_ATTRS = ("layer_idx", "layer_id", "layer_index", "block_idx")

# Config lists that can coincidentally have L entries but are not per-layer.
_NOT_PER_LAYER = frozenset(
    {"architectures", "eos_token_id", "bos_token_id", "pad_token_id", "suppress_tokens",
     "begin_suppress_tokens", "bad_words_ids", "forced_decoder_ids", "label2id", "id2label"}
)


def keep_list(removed: Sequence[int], num_layers: int, *, param: str = "prune.layers") -> list[int]:
    """Sorted indices that stay, after checking ``removed`` against a model of ``num_layers`` layers."""
    seen: set[int] = set()
    for i in removed:
        if isinstance(i, bool) or not isinstance(i, int):
            raise SpecError(f"layer index {i!r} is not an integer", param=param)
        if i < 0 or i >= num_layers:
            raise SpecError(f"layer index {i} is out of range [0, {num_layers})", param=param)
        if i in seen:
            raise SpecError(f"layer index {i} is listed twice", param=param)
        seen.add(i)
    if len(seen) >= num_layers:
        raise SpecError(f"cannot remove all {num_layers} layers (at least one must remain)", param=param)
    return [i for i in range(num_layers) if i not in seen]


def per_layer_config_keys(values: dict[str, Any], num_layers: int) -> list[str]:
    """Keys of ``values`` (a text config's attributes) that hold one entry per layer."""
    keys = []
    for key, value in values.items():
        if key.startswith("_") or key in _NOT_PER_LAYER:
            continue
        if isinstance(value, (list, tuple)) and len(value) == num_layers:
            keys.append(key)
    return keys


def cut_layer_config(config: Any, keep: Sequence[int]) -> None:
    """Set the layer count of ``config`` to ``len(keep)`` and cut its per-layer lists to ``keep``.

    ``config`` is a transformers config (the text part of a multimodal one is found and edited).
    Used by both the in-memory and the streaming path so they save the same config.
    """
    cfg = text_config(config)
    num_layers = num_layers_of(config)
    key = layer_count_key(config)
    for name in per_layer_config_keys(dict(vars(cfg)), num_layers):
        old = getattr(cfg, name)
        new = [old[i] for i in keep]
        setattr(cfg, name, type(old)(new) if isinstance(old, tuple) else new)
    setattr(cfg, key, len(keep))


def layers_key_prefix(config) -> str:  # type: ignore[no-untyped-def]
    """State-dict key prefix of the decoder blocks, e.g. ``model.layers.`` (block i: prefix + f"{i}.").

    Read off a one-layer skeleton: the path does not depend on the layer count, and one layer
    builds in 3 ms where the bundled model's 30 take 12.
    """
    probe = copy.deepcopy(config)
    cut_layer_config(probe, [0])
    return find_decoder_parts(meta_model(probe)).layers_path + "."


def refuse_index_dependent_math(config: Any) -> None:
    """Refuse configs whose layers compute with their own index (renumbering would change them).

    GPT-2's ``scale_attn_by_inverse_layer_idx`` scales attention by 1/(layer_idx + 1), fixed when
    the model is built: a pruned model reloaded from disk would use the new index, not the old.
    """
    if getattr(text_config(config), "scale_attn_by_inverse_layer_idx", False):
        raise UnsupportedArchitectureError(
            "layers of this model scale attention by their own index (scale_attn_by_inverse_layer_idx); "
            "removing layers would change the kept layers' arithmetic",
            param="model",
        )


def _renumber(layer: nn.Module, old: int, new: int) -> None:
    for module in layer.modules():
        for attr in INDEX_ATTRS:
            value = getattr(module, attr, None)
            # Only an attribute that names this layer's old position is an index; leave others.
            if isinstance(value, int) and not isinstance(value, bool) and value == old:
                setattr(module, attr, new)


def remove_layers(model: nn.Module, removed: Sequence[int]) -> list[int]:
    """Remove the decoder layers ``removed`` (current numbering) from ``model`` in place.

    Returns the keep list (``keep[j]`` = the old index of new layer ``j``). Removing nothing
    leaves the model untouched. Raises SpecError (param ``prune.layers``) for duplicate or
    out-of-range indices and for removing every layer.
    """
    parts = find_decoder_parts(model)
    num_layers = len(parts.layers)
    keep = keep_list(removed, num_layers)
    if len(keep) == num_layers:
        return keep
    refuse_index_dependent_math(model.config)
    kept = [parts.layers[i] for i in keep]
    for new, (old, layer) in enumerate(zip(keep, kept, strict=True)):
        _renumber(layer, old, new)
    parent_path, _, attr = parts.layers_path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, nn.ModuleList(kept))
    cut_layer_config(model.config, keep)
    return keep
