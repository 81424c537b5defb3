"""core.scoring.similarity, directly: block_influence and angular against their definitions
(docs/methods.md §1) computed here from the model's own ``output_hidden_states`` (x_0 … x_{L−1};
the raw output of the last block, which Llama's list replaces by the normed state, read with one
hook), with every cosine written out as a dot product over norms in float64."""

from __future__ import annotations

import math

import pytest
import torch

from layerprune.core.errors import SpecError
from layerprune.core.scoring.similarity import angular_scores, block_influence_scores
from tests.tiny import LAYERS, VOCAB, tiny_model
from tests.torch_threads import one_thread  # noqa: F401

CALIBRATION = torch.randint(3, VOCAB, (5, 16), generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def models():  # type: ignore[no-untyped-def]
    return {family: tiny_model(family) for family in ("llama", "gpt2")}


def states(model, ids: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
    """x_0 … x_L as [windows, seq, hidden] float64."""
    blocks = model.model.layers if hasattr(model, "model") else model.transformer.h
    last: list[torch.Tensor] = []
    handle = blocks[-1].register_forward_hook(
        lambda m, a, out: last.append(out if isinstance(out, torch.Tensor) else out[0]))
    try:
        with torch.no_grad():
            hidden = model(input_ids=ids, use_cache=False, output_hidden_states=True).hidden_states
    finally:
        handle.remove()
    return [h.double() for h in hidden[:LAYERS]] + [last[0].double()]


def cos(a: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return (a * z).sum(-1) / (a.norm(dim=-1) * z.norm(dim=-1))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("batch_size", [None, 2])
def test_block_influence_paper_is_one_minus_the_mean_token_cosine(family: str, batch_size: int | None,
                                                                   models) -> None:
    x = states(models[family], CALIBRATION)
    want = [float((1 - cos(x[i], x[i + 1])).mean()) for i in range(LAYERS)]
    got = block_influence_scores(models[family], CALIBRATION, batch_size=batch_size)
    assert got == pytest.approx(want, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("batch_size", [None, 3])
def test_block_influence_reference_code_is_one_cosine_of_everything_and_skips_the_last(
        batch_size: int | None, models) -> None:
    x = states(models["llama"], CALIBRATION)
    want = [float(1 - cos(x[i].flatten(), x[i + 1].flatten())) for i in range(LAYERS - 1)] + [None]
    got = block_influence_scores(models["llama"], CALIBRATION, semantics="reference_code", batch_size=batch_size)
    assert got[-1] is None
    assert got[:-1] == pytest.approx(want[:-1], rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("n", [1, 3, LAYERS - 1])
def test_angular_is_the_mean_angle_between_last_tokens_n_blocks_apart(family: str, n: int, models) -> None:
    x = [s[:, -1, :] for s in states(models[family], CALIBRATION)]
    want = [float((torch.arccos(cos(x[s], x[s + n]).clamp(-1, 1)) / math.pi).mean()) for s in range(LAYERS - n + 1)]
    for batch_size in (None, 2):
        got = angular_scores(models[family], CALIBRATION, block_size=n, batch_size=batch_size)
        assert len(got) == LAYERS - n + 1
        assert got == pytest.approx(want, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("n", [0, LAYERS])
def test_angular_block_size_out_of_range_is_a_spec_error(n: int, models) -> None:
    with pytest.raises(SpecError, match=f"1..{LAYERS - 1} layers, got {n}") as err:
        angular_scores(models["llama"], CALIBRATION, block_size=n)
    assert err.value.param == "prune.num_layers"
