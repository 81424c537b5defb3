"""core/architecture.py and the layer count of core/layer_plan.py: found by inspection, on every family."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch import nn
from transformers import AutoConfig, Gemma3Config

from layerprune.core import architecture
from layerprune.core.architecture import count_params, find_decoder_parts, layer_param_count, meta_model
from layerprune.core.errors import UnsupportedArchitectureError
from layerprune.core.layer_plan import layer_count_key, num_layers_of, text_config
from tests.tiny import FAMILIES, LAYERS, tiny_model

# Where each family keeps its blocks and final norm, as its modelling code names them.
EXPECTED_PATHS = {
    "gpt2": ("transformer.h", "transformer.ln_f", "lm_head"),
    "gpt_neox": ("gpt_neox.layers", "gpt_neox.final_layer_norm", "lm_head"),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_decoder_parts_of_every_family(family: str) -> None:
    model = tiny_model(family)
    parts = find_decoder_parts(model)
    layers, norm, head = EXPECTED_PATHS.get(family, ("model.layers", "model.norm", "lm_head"))
    assert (parts.layers_path, parts.final_norm_path, parts.lm_head_path) == (layers, norm, head)
    assert len(parts.layers) == LAYERS and parts.layers is model.get_submodule(layers)
    assert parts.lm_head is model.get_output_embeddings() and parts.embeddings is model.get_input_embeddings()
    assert sum(layer_param_count(layer) for layer in parts.layers) == sum(
        p.numel() for p in model.get_submodule(layers).parameters())


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
def test_count_params_counts_a_tied_tensor_once_and_a_skeleton_counts_the_same(family: str) -> None:
    model = tiny_model(family)
    unique = {id(p): p.numel() for m in model.modules() for p in m.parameters(recurse=False)}
    assert count_params(model) == sum(unique.values())
    assert count_params(meta_model(model.config)) == count_params(model)


def test_the_layer_count_is_one_function_for_config_objects_and_config_json(tiny_dirs) -> None:
    for family in ("llama", "gpt2", "gemma3"):
        path: Path = tiny_dirs(family)
        raw = json.loads((path / "config.json").read_text())
        assert num_layers_of(AutoConfig.from_pretrained(path)) == num_layers_of(raw) == LAYERS
    assert layer_count_key({"n_layer": 12}) == "n_layer"
    assert architecture.num_layers_of is num_layers_of  # the surgery code reads the same function


def test_a_nested_text_config_holds_the_decoders_layers() -> None:
    """Multimodal configs (Gemma 3) nest the text model; its layer count is the decoder's."""
    config = Gemma3Config(text_config={"num_hidden_layers": 5, "hidden_size": 64, "intermediate_size": 128,
                                       "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16},
                          vision_config={"num_hidden_layers": 3})
    assert num_layers_of(config) == 5
    raw = config.to_dict()
    assert num_layers_of(raw) == 5 and text_config(raw) is raw["text_config"]


@pytest.mark.parametrize("config", [{}, {"num_hidden_layers": "12"}, {"num_hidden_layers": True},
                                    {"text_config": {"hidden_size": 8}}])
def test_no_layer_count_is_an_unsupported_architecture(config: dict) -> None:
    with pytest.raises(UnsupportedArchitectureError) as info:
        num_layers_of(config)
    assert info.value.param == "model"


def test_a_model_without_a_block_list_is_refused() -> None:
    class NotADecoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = AutoConfig.for_model("llama", num_hidden_layers=3)
            self.layers = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])  # 2, not 3

    with pytest.raises(UnsupportedArchitectureError, match="no list of 3 decoder blocks"):
        find_decoder_parts(NotADecoder())
