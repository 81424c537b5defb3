"""Every layer score against an independent implementation written here from its definition.

The references below use nothing of ``layerprune.core.scoring``: plain torch over the model's own
blocks, with forward hooks to read a block's input and raw output (or to make a block return its
input, which is what removing it does to a cache-free forward), one forward and one backward of
the whole calibration set at once, and float64 for every sum. Our scores come from the public
``score_layers`` with several batch sizes (they must not matter), on a tiny Llama/GPT-2 and on the
bundled SmolLM2-135M (marked slow; few short windows).

Definitions (docs/methods.md §1), x_i = input of block i, x_{i+1} its raw output:
  magnitude_l1  Σ|w|;  magnitude_l2  Σ‖W‖_F (paper) or Σw² (reference code); weights and norms, no biases
  taylor        Σ|w·∂L/∂w|, L = mean next-token CE over every predicted token of the calibration set
  ppl           exp(mean next-token CE) of the model with block i removed
  block_influence  paper: 1 − mean over tokens of cos(x_i[t], x_{i+1}[t]);
                   reference code: 1 − cos(flatten(all x_i), flatten(all x_{i+1})), last block unscored
  angular       arccos(cos(x_ℓ[last], x_{ℓ+n}[last]))/π, mean over windows, per block start ℓ
  reverse_order the last k layers;  random  random.Random(seed).sample(range(L), k)
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from layerprune.core.scoring import calibration_batches, choose_layers, score_layers
from layerprune.core.spec import CalibrationSpec, PruneSpec
from tests.tiny import LAYERS, VOCAB, tiny_model

# ---------------------------------------------------------------- independent references


def blocks(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks, found by the families' own attribute names."""
    for path in ("model.layers", "transformer.h", "gpt_neox.layers"):
        obj: Any = model
        try:
            for attr in path.split("."):
                obj = getattr(obj, attr)
        except AttributeError:
            continue
        return obj
    raise AssertionError(f"no decoder blocks found on {type(model).__name__}")


def block_io(model: nn.Module, ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(x_i, x_{i+1}) of every block for a forward of ``ids``, as float64."""
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = []
    for i, block in enumerate(blocks(model)):

        def hook(module: nn.Module, args: tuple, kwargs: dict, out: Any, i: int = i) -> None:
            x_in = args[0] if args else kwargs["hidden_states"]
            x_out = out if isinstance(out, torch.Tensor) else out[0]
            seen[i] = (x_in.detach().double(), x_out.detach().double())

        handles.append(block.register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return [seen[i] for i in range(len(seen))]


def weights(block: nn.Module) -> list[torch.Tensor]:
    return [p for name, p in block.named_parameters() if not name.endswith("bias")]


def ref_magnitude(model: nn.Module, metric: str, semantics: str) -> list[float]:
    scores = []
    for block in blocks(model):
        total = 0.0
        for w in weights(block):
            w = w.detach().double()
            if metric == "magnitude_l1":
                total += float(w.abs().sum())
            elif semantics == "paper":
                total += math.sqrt(float((w * w).sum()))
            else:
                total += float((w * w).sum())
        scores.append(total)
    return scores


def mean_next_token_ce(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits[:, :-1].double().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def ref_taylor(model: nn.Module, ids: torch.Tensor) -> list[float]:
    """One forward and one backward of every window together: ∂ of the mean loss of the whole set."""
    model.zero_grad()
    mean_next_token_ce(model(input_ids=ids, use_cache=False).logits, ids).backward()
    scores = []
    for block in blocks(model):
        scores.append(sum(float((w.detach().double() * w.grad.double()).abs().sum()) for w in weights(block)))
    model.zero_grad()
    return scores


def ref_ppl(model: nn.Module, ids: torch.Tensor) -> list[float]:
    """Block i removed = block i returning its input (nothing downstream reads a cache here)."""
    scores = []
    for block in blocks(model):

        def skip(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
            x_in = args[0] if args else kwargs["hidden_states"]
            return x_in if isinstance(out, torch.Tensor) else (x_in, *out[1:])

        h = block.register_forward_hook(skip, with_kwargs=True)
        try:
            with torch.no_grad():
                loss = mean_next_token_ce(model(input_ids=ids, use_cache=False).logits, ids)
        finally:
            h.remove()
        scores.append(math.exp(float(loss)))
    return scores


def ref_block_influence(model: nn.Module, ids: torch.Tensor, semantics: str) -> list[float | None]:
    scores: list[float | None] = []
    for x_in, x_out in block_io(model, ids):
        if semantics == "paper":
            dot = (x_in * x_out).sum(-1)
            cos = dot / (x_in.norm(dim=-1) * x_out.norm(dim=-1))
            scores.append(float((1 - cos).mean()))
        else:  # every window flattened together: one vector per block side
            a, z = x_in.reshape(-1), x_out.reshape(-1)
            scores.append(float(1 - (a @ z) / (a.norm() * z.norm())))
    if semantics == "reference_code":
        scores[-1] = None
    return scores


def ref_angular(model: nn.Module, ids: torch.Tensor, n: int) -> list[float]:
    io = block_io(model, ids)
    states = [x_in[:, -1] for x_in, _ in io] + [io[-1][1][:, -1]]  # x_0 .. x_L at the last token
    scores = []
    for start in range(len(io) - n + 1):
        a, z = states[start], states[start + n]
        cos = ((a * z).sum(-1) / (a.norm(dim=-1) * z.norm(dim=-1))).clamp(-1, 1)
        scores.append(float((torch.arccos(cos) / math.pi).mean()))
    return scores


def lowest(scores: list[float | None], k: int) -> list[int]:
    """The k lowest scored layers (ties to the lower index), written out here too."""
    scored = [i for i, s in enumerate(scores) if s is not None]
    return sorted(sorted(scored, key=lambda i: (scores[i], i))[:k])


# ---------------------------------------------------------------- tiny models


def calib(n: int = 4, seq: int = 20, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, VOCAB, (n, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize(
    ("metric", "semantics"),
    [("magnitude_l1", "paper"), ("magnitude_l2", "paper"), ("magnitude_l2", "reference_code")],
)
def test_magnitude_equals_its_definition(family: str, metric: str, semantics: str) -> None:
    model = tiny_model(family)
    ours = score_layers(model, metric, calibration=None, semantics=semantics)
    assert ours == pytest.approx(ref_magnitude(model, metric, semantics), rel=1e-12)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("batch_size", [1, 3, None])
def test_taylor_equals_its_definition(family: str, batch_size: int | None) -> None:
    model = tiny_model(family)
    ids = calib()
    ours = score_layers(model, "taylor", calibration=ids, batch_size=batch_size)
    assert ours == pytest.approx(ref_taylor(model, ids), rel=1e-4)


@pytest.mark.parametrize("batch_size", [1, 3, None])
def test_ppl_equals_its_definition(batch_size: int | None) -> None:
    model = tiny_model("llama")
    ids = calib()
    ours = score_layers(model, "ppl", calibration=ids, batch_size=batch_size)
    assert ours == pytest.approx(ref_ppl(model, ids), rel=1e-5)


@pytest.mark.parametrize("semantics", ["paper", "reference_code"])
@pytest.mark.parametrize("batch_size", [1, 3, None])
def test_block_influence_equals_its_definition(semantics: str, batch_size: int | None) -> None:
    model = tiny_model("llama")
    ids = calib()
    ours = score_layers(model, "block_influence", calibration=ids, semantics=semantics, batch_size=batch_size)
    ref = ref_block_influence(model, ids, semantics)
    assert (ours[-1] is None) == (semantics == "reference_code")
    assert [s for s in ours if s is not None] == pytest.approx([s for s in ref if s is not None], rel=1e-6)


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("batch_size", [1, None])
def test_angular_equals_its_definition(n: int, batch_size: int | None) -> None:
    model = tiny_model("llama")
    ids = calib()
    ours = score_layers(model, "angular", calibration=ids, block_size=n, batch_size=batch_size)
    assert ours == pytest.approx(ref_angular(model, ids, n), rel=1e-6)


@pytest.mark.parametrize(("metric", "seed"), [("reverse_order", 42), ("random", 42), ("random", 7)])
def test_positional_metrics_remove_the_layers_their_definition_names(
    metric: str, seed: int, tiny_dirs, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    """Through the pruning entry point: the last k layers, or k drawn with random.Random(seed)."""
    from layerprune.core.prune import prune_model

    k = 3
    expected = list(range(LAYERS - k, LAYERS)) if metric == "reverse_order" else sorted(
        random.Random(seed).sample(range(LAYERS), k))
    assert score_layers(tiny_model("llama"), metric, calibration=None) == [None] * LAYERS
    result = prune_model(tiny_dirs("llama"), PruneSpec(metric=metric, num_layers=k, seed=seed), tmp_path / "out")
    assert result.removed_layers == expected


# ---------------------------------------------------------------- the bundled model


@pytest.fixture(scope="module")
def bundled(bundled_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(bundled_dir, dtype=torch.float32)
    model.eval()
    ids = calibration_batches(AutoTokenizer.from_pretrained(bundled_dir), CalibrationSpec(num_samples=4, seq_len=16))
    return model, ids


K = 7  # 25% of 30 layers, as the pipeline removes by default


@pytest.mark.slow
@pytest.mark.parametrize(
    ("metric", "semantics"),
    [("magnitude_l1", "paper"), ("magnitude_l2", "paper"), ("magnitude_l2", "reference_code")],
)
def test_bundled_magnitude_equals_its_definition(bundled, metric: str, semantics: str) -> None:  # type: ignore[no-untyped-def]
    model, _ = bundled
    ours = score_layers(model, metric, calibration=None, semantics=semantics)
    ref = ref_magnitude(model, metric, semantics)
    assert ours == pytest.approx(ref, rel=1e-12)
    assert choose_layers(metric, ours, K, 30) == lowest(ref, K)


@pytest.mark.slow
def test_bundled_taylor_equals_its_definition_at_any_batch_size(bundled) -> None:  # type: ignore[no-untyped-def]
    model, ids = bundled
    ref = ref_taylor(model, ids)
    one = score_layers(model, "taylor", calibration=ids, batch_size=1)
    four = score_layers(model, "taylor", calibration=ids, batch_size=4)
    assert one == pytest.approx(ref, rel=1e-4)
    assert four == pytest.approx(ref, rel=1e-4)
    assert one == pytest.approx(four, rel=1e-4)
    assert choose_layers("taylor", one, K, 30) == choose_layers("taylor", four, K, 30) == lowest(ref, K)


@pytest.mark.slow
def test_bundled_ppl_equals_its_definition(bundled) -> None:  # type: ignore[no-untyped-def]
    model, ids = bundled
    ids = ids[:2]  # 30 full forwards for the reference: keep them short
    ours = score_layers(model, "ppl", calibration=ids)
    ref = ref_ppl(model, ids)
    assert ours == pytest.approx(ref, rel=1e-4)
    assert choose_layers("ppl", ours, K, 30) == lowest(ref, K)


@pytest.mark.slow
@pytest.mark.parametrize("semantics", ["paper", "reference_code"])
def test_bundled_block_influence_equals_its_definition(bundled, semantics: str) -> None:  # type: ignore[no-untyped-def]
    """Reference-code BI sits at 1 − cos ≈ 1e-4 on the middle layers (a first token ~300× the median
    activation): an fp32 cosine, or one cosine per batch, is off by far more than this tolerance."""
    model, ids = bundled
    ref = ref_block_influence(model, ids, semantics)
    for batch_size in (1, None):
        ours = score_layers(model, "block_influence", calibration=ids, semantics=semantics, batch_size=batch_size)
        assert (ours[-1] is None) == (semantics == "reference_code")
        assert [s for s in ours if s is not None] == pytest.approx([s for s in ref if s is not None], rel=1e-4)
        assert choose_layers("block_influence", ours, K, 30) == lowest(ref, K)


@pytest.mark.slow
def test_bundled_angular_equals_its_definition(bundled) -> None:  # type: ignore[no-untyped-def]
    model, ids = bundled
    ours = score_layers(model, "angular", calibration=ids, block_size=K, batch_size=2)
    ref = ref_angular(model, ids, K)
    assert ours == pytest.approx(ref, rel=1e-5)
    assert choose_layers("angular", ours, K, 30, block_size=K) == list(range(ref.index(min(ref)), ref.index(min(ref)) + K))
