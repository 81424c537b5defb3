"""A model's decoder layer count, and whether a prune spec's layer plan fits it. Torch-free.

The API (at POST time, from a ``config.json`` it can read without a download) and the worker
(from the loaded config of whatever it resolved: a local directory, the bundled model, a hub
download) ask the same two functions, so a spec gets the same answer, naming the same field,
whichever kind of model source it names.

A config is either a ``transformers`` config object or the parsed ``config.json`` (a dict);
multimodal configs (Gemma 3 …) nest the text model's config, whose layers are the decoder's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from layerprune.core.errors import SpecError, UnsupportedArchitectureError
from layerprune.core.spec import PruneSpec, resolve_layer_count

LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


def text_config(config: Any) -> Any:
    """The text part of a config (Gemma3 and other multimodal configs nest it)."""
    if isinstance(config, Mapping):
        nested = config.get("text_config")
        return nested if isinstance(nested, Mapping) else config
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def _field(config: Any, key: str) -> Any:
    return config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)


def layer_count_key(config: Any) -> str:
    """The key that holds the decoder layer count (``num_hidden_layers`` on most families)."""
    cfg = text_config(config)
    for key in LAYER_COUNT_KEYS:
        value = _field(cfg, key)
        if isinstance(value, int) and not isinstance(value, bool):
            return key
    name = config.get("model_type", "config.json") if isinstance(config, Mapping) else type(config).__name__
    raise UnsupportedArchitectureError(f"unsupported architecture {name}: no layer count in its config",
                                       param="model")


def num_layers_of(config: Any) -> int:
    """The decoder layer count of a config object or a parsed config.json."""
    return int(_field(text_config(config), layer_count_key(config)))


@dataclass(frozen=True)
class LayerPlan:
    """How a prune spec removes layers from a model of ``num_layers`` layers."""

    num_layers: int
    removed: int  # k: layers removed in all
    step: int  # layers removed per round (k for one-shot pruning and for 'manual')

    @property
    def rounds(self) -> int:
        return math.ceil(self.removed / self.step)

    @property
    def remaining(self) -> int:
        return self.num_layers - self.removed


def check_layer_plan(prune: PruneSpec, num_layers: int) -> LayerPlan:
    """The plan of ``prune`` on a model of ``num_layers`` layers; SpecError naming the field when
    ``ratio``/``num_layers``/``layers``/``protect_layers``/``iterative_step`` cannot be met."""
    k = resolve_layer_count(prune, num_layers)
    step = prune.iterative_step
    if step is not None and step > k:
        # More per round than in all: the spec's author expected a larger k (a misread ratio).
        raise SpecError(f"iterative_step {step} is more than the {k} layers removed", param="prune.iterative_step")
    # 'manual' names its layers up front: there is nothing to re-score between rounds.
    if step is None or prune.metric == "manual":
        step = k
    return LayerPlan(num_layers=num_layers, removed=k, step=step)
