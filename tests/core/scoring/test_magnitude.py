"""core.scoring.magnitude, directly: in-memory and streamed scores against the definition
(docs/methods.md §1) computed here from the model's state dict with torch's own norms, and the
streamed reader's errors on broken files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from layerprune.core.errors import ModelSourceError, SpecError
from layerprune.core.scoring import magnitude
from tests.tiny import LAYERS, tiny_model
from tests.torch_threads import one_thread  # noqa: F401

BLOCK_PREFIX = {"llama": "model.layers.", "gpt2": "transformer.h."}


def definition(state: dict[str, torch.Tensor], prefix: str, p: int, semantics: str) -> list[float]:
    """Σ over block i's non-bias tensors of ‖W‖₁, ‖W‖_F (paper) or ‖W‖_F² (reference code)."""
    scores = []
    for i in range(LAYERS):
        total = 0.0
        for name, w in state.items():
            if not name.startswith(f"{prefix}{i}.") or name.endswith(".bias") or not w.is_floating_point():
                continue
            norm = torch.linalg.vector_norm(w.double().flatten(), ord=p).item()
            total += norm ** 2 if (p == 2 and semantics == "reference_code") else norm
        scores.append(total)
    return scores


CASES = [(1, "paper"), (2, "paper"), (2, "reference_code")]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize(("p", "semantics"), CASES)
def test_in_memory_scores_equal_the_definition(family: str, p: int, semantics: str) -> None:
    model = tiny_model(family)
    want = definition(model.state_dict(), BLOCK_PREFIX[family], p, semantics)
    got = magnitude.magnitude_scores(model, p, semantics)
    assert got == pytest.approx(want, rel=1e-12)
    assert len(set(round(s, 9) for s in got)) == LAYERS  # a real ranking, not ties


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize(("p", "semantics"), CASES)
def test_streamed_scores_equal_the_definition_on_the_files(family: str, p: int, semantics: str, tiny_dirs) -> None:
    src = tiny_dirs(family)
    state: dict[str, torch.Tensor] = {}
    for f in src.glob("*.safetensors"):
        state.update(load_file(f))
    prefix = BLOCK_PREFIX[family] if any(k.startswith(BLOCK_PREFIX[family]) for k in state) else "h."
    want = definition(state, prefix, p, semantics)
    assert magnitude.magnitude_scores_from_files(src, p, semantics) == pytest.approx(want, rel=1e-12)


def test_a_tensor_is_summed_in_chunks_without_changing_its_sum(monkeypatch: pytest.MonkeyPatch) -> None:
    t = torch.randn(1001, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    whole = [magnitude.tensor_magnitude(t, p, s) for p, s in CASES]
    monkeypatch.setattr(magnitude, "_CHUNK_ELEMENTS", 7)
    assert [magnitude.tensor_magnitude(t, p, s) for p, s in CASES] == pytest.approx(whole, rel=1e-12)
    assert whole[0] == pytest.approx(float(t.double().abs().sum()), rel=1e-12)
    assert magnitude.tensor_magnitude(torch.empty(0), 2, "paper") == 0.0
    with pytest.raises(SpecError) as err:
        magnitude.tensor_magnitude(t, 3, "paper")
    assert err.value.param == "prune.metric"


def _copy_model(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file():
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_a_block_weight_missing_from_the_files_is_named(tiny_dirs, tmp_path: Path) -> None:
    model_dir = _copy_model(tiny_dirs("llama"), tmp_path / "m")
    (f,) = model_dir.glob("*.safetensors")
    tensors = load_file(f)
    del tensors["model.layers.3.mlp.up_proj.weight"]
    save_file(tensors, f, metadata={"format": "pt"})
    with pytest.raises(ModelSourceError, match="found .* of the .* block weights") as err:
        magnitude.magnitude_scores_from_files(model_dir, 1)
    assert err.value.param == "model"


def test_a_block_weight_of_an_unscorable_dtype_is_named(tiny_dirs, tmp_path: Path) -> None:
    model_dir = _copy_model(tiny_dirs("llama"), tmp_path / "m")
    (f,) = model_dir.glob("*.safetensors")
    tensors = load_file(f)
    tensors["model.layers.2.input_layernorm.weight"] = tensors["model.layers.2.input_layernorm.weight"].to(torch.int32)
    save_file(tensors, f, metadata={"format": "pt"})
    with pytest.raises(ModelSourceError, match="model.layers.2.input_layernorm.weight: cannot score .* I32"):
        magnitude.magnitude_scores_from_files(model_dir, 2)


def test_a_truncated_file_is_named(tiny_dirs, tmp_path: Path) -> None:
    model_dir = _copy_model(tiny_dirs("llama"), tmp_path / "m")
    (f,) = model_dir.glob("*.safetensors")
    data = f.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    # Cut the file inside the block tensor stored last, so the header still parses.
    last = max((v["data_offsets"][1], k) for k, v in header.items() if k.startswith("model.layers."))
    f.write_bytes(data[:8 + header_len + last[0] - 4])
    with pytest.raises(ModelSourceError, match="truncated"):
        magnitude.magnitude_scores_from_files(model_dir, 1)
