"""In-memory layer removal: docs/methods.md §5, invariants 1–3 on every tiny family and the real model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config

from layerprune.core.architecture import count_params, find_decoder_parts, layer_param_count
from layerprune.core.errors import SpecError, UnsupportedArchitectureError
from layerprune.core.removal import INDEX_ATTRS, cut_layer_config, keep_list, remove_layers
from tests.tiny import FAMILIES, LAYERS, tiny_model

REMOVED = [1, 4, 7]
PROMPT = torch.tensor([[5, 17, 42, 99, 3, 250]])


def _greedy(model, use_cache: bool, steps: int = 6) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(PROMPT, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                              use_cache=use_cache, pad_token_id=2)


def _layer_state(layer: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in layer.state_dict().items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_removal_invariants(family: str, tmp_path: Path) -> None:
    model = tiny_model(family, seed=1)
    parts = find_decoder_parts(model)
    before_layers = [_layer_state(layer) for layer in parts.layers]
    removed_params = sum(layer_param_count(parts.layers[i]) for i in REMOVED)
    params_before = count_params(model)
    emb = parts.embeddings.weight.detach().clone()
    head = parts.lm_head.weight.detach().clone()
    norm = {k: v.clone() for k, v in parts.final_norm.state_dict().items()} if parts.final_norm else {}
    tied = parts.lm_head.weight.data_ptr() == parts.embeddings.weight.data_ptr()
    dtype = next(model.parameters()).dtype

    keep = remove_layers(model, REMOVED)

    assert keep == [i for i in range(LAYERS) if i not in REMOVED]
    parts = find_decoder_parts(model)
    assert len(parts.layers) == model.config.num_hidden_layers == LAYERS - len(REMOVED)
    # Invariant 2: kept layer j is bit-identical to original keep[j]; the rest is untouched.
    for j, old in enumerate(keep):
        state = parts.layers[j].state_dict()
        assert state.keys() == before_layers[old].keys()
        for name, value in state.items():
            assert torch.equal(value, before_layers[old][name]), (j, name)
        # Every per-layer index now names the new position (KV-cache slot).
        for mod in parts.layers[j].modules():
            for attr in INDEX_ATTRS:
                if isinstance(getattr(mod, attr, None), int):
                    assert getattr(mod, attr) == j
    assert torch.equal(parts.embeddings.weight, emb)
    assert torch.equal(parts.lm_head.weight, head)
    for k, v in (parts.final_norm.state_dict().items() if parts.final_norm else []):
        assert torch.equal(v, norm[k])
    assert (parts.lm_head.weight.data_ptr() == parts.embeddings.weight.data_ptr()) == tied
    assert all(p.dtype == dtype for p in model.parameters())
    assert count_params(model) == params_before - removed_params

    # Invariant 1: saved and reloaded, no missing/unexpected keys, same layer count, same greedy
    # tokens with and without the KV cache (stale layer_idx would break the cached path).
    model.save_pretrained(tmp_path)
    reloaded, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    reloaded.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert reloaded.config.num_hidden_layers == len(find_decoder_parts(reloaded).layers) == len(keep)
    cached = _greedy(reloaded, use_cache=True)
    assert torch.equal(cached, _greedy(reloaded, use_cache=False))
    assert torch.equal(cached, _greedy(model, use_cache=True))


def test_per_layer_config_lists_are_cut() -> None:
    model = tiny_model("gemma2")
    types = list(model.config.layer_types)
    keep = remove_layers(model, [0, 3])
    assert model.config.layer_types == [types[i] for i in keep]
    # Each kept attention module keeps its own kind (sliding or full).
    for j, layer in enumerate(find_decoder_parts(model).layers):
        assert layer.self_attn.layer_type == model.config.layer_types[j]


def test_cut_layer_config_on_nested_text_config() -> None:
    from transformers import Gemma3Config

    config = Gemma3Config(text_config={"num_hidden_layers": 6, "hidden_size": 64, "intermediate_size": 64,
                                       "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32})
    types = list(config.text_config.layer_types)
    cut_layer_config(config, [0, 2, 5])
    assert config.text_config.num_hidden_layers == 3
    assert config.text_config.layer_types == [types[i] for i in (0, 2, 5)]


def test_removing_nothing_is_identity() -> None:
    model = tiny_model("llama")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    layers = find_decoder_parts(model).layers
    assert remove_layers(model, []) == list(range(LAYERS))
    assert find_decoder_parts(model).layers is layers
    assert model.config.num_hidden_layers == LAYERS
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)


def test_bf16_dtype_is_kept() -> None:
    model = tiny_model("qwen2", dtype=torch.bfloat16)
    remove_layers(model, [2])
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize(
    "removed, fragment",
    [([1, 1], "twice"), ([LAYERS], "out of range"), ([-1], "out of range"), (list(range(LAYERS)), "all"),
     ([1.5], "not an integer")],
)
def test_bad_indices_are_spec_errors(removed: list, fragment: str) -> None:
    model = tiny_model("llama")
    with pytest.raises(SpecError) as err:
        remove_layers(model, removed)
    assert err.value.param == "prune.layers"
    assert fragment in err.value.message
    assert model.config.num_hidden_layers == LAYERS  # nothing changed on error


def test_keep_list_param_is_configurable() -> None:
    with pytest.raises(SpecError) as err:
        keep_list([9], 4, param="prune.protect_layers")
    assert err.value.param == "prune.protect_layers"


def test_index_dependent_attention_scaling_is_refused() -> None:
    config = GPT2Config(vocab_size=64, n_embd=32, n_layer=4, n_head=2, scale_attn_by_inverse_layer_idx=True)
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(UnsupportedArchitectureError):
        remove_layers(model, [1])


@pytest.mark.slow
def test_bundled_model_in_memory(bundled_dir: Path) -> None:
    """The real SmolLM2 (bf16 on disk): remove the last 7 of 30 layers, cached == uncached."""
    model = AutoModelForCausalLM.from_pretrained(bundled_dir, dtype=torch.float32).eval()
    original_last_kept = _layer_state(find_decoder_parts(model).layers[22])
    keep = remove_layers(model, list(range(23, 30)))
    assert keep == list(range(23))
    assert model.config.num_hidden_layers == 23
    state = find_decoder_parts(model).layers[22].state_dict()
    assert all(torch.equal(state[k], original_last_kept[k]) for k in state)
    assert find_decoder_parts(model).layers[22].self_attn.layer_idx == 22
    assert torch.equal(_greedy(model, True, steps=4), _greedy(model, False, steps=4))
