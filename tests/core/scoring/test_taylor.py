"""core.scoring.taylor, directly: Σ|w·∂L/∂w| per block against the definition (docs/methods.md §1)
computed here on a float64 copy of the model, with L the model's own ``labels=`` loss (the mean
next-token cross-entropy of the whole calibration set) and ``torch.autograd.grad``; and the
scorer leaves the model as it found it."""

from __future__ import annotations

import copy

import pytest
import torch

from layerprune.core.scoring.taylor import summed_next_token_nll, taylor_scores
from tests.tiny import LAYERS, VOCAB, tiny_model
from tests.torch_threads import one_thread  # noqa: F401

CALIBRATION = torch.randint(3, VOCAB, (5, 12), generator=torch.Generator().manual_seed(3))


def definition(model, ids: torch.Tensor) -> list[float]:  # type: ignore[no-untyped-def]
    ref = copy.deepcopy(model).double().eval()
    blocks = ref.model.layers if hasattr(ref, "model") else ref.transformer.h
    weights = [[p for name, p in block.named_parameters() if not name.endswith("bias")] for block in blocks]
    loss = ref(input_ids=ids, labels=ids, use_cache=False).loss
    grads = torch.autograd.grad(loss, [w for ws in weights for w in ws])
    scores, k = [], 0
    for ws in weights:
        total = 0.0
        for w in ws:
            total += float((w.detach() * grads[k]).abs().sum())
            k += 1
        scores.append(total)
    return scores


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_taylor_equals_the_definition_at_any_batch_size(family: str) -> None:
    model = tiny_model(family)
    want = definition(model, CALIBRATION)
    for batch_size in (None, 2, 1):
        got = taylor_scores(model, CALIBRATION, batch_size=batch_size)
        assert len(got) == LAYERS
        assert got == pytest.approx(want, rel=2e-4), batch_size


def test_summed_nll_is_the_models_mean_loss_times_the_predicted_tokens() -> None:
    model = tiny_model("llama")
    with torch.no_grad():
        out = model(input_ids=CALIBRATION, labels=CALIBRATION, use_cache=False)
    predicted = CALIBRATION.shape[0] * (CALIBRATION.shape[1] - 1)
    assert float(summed_next_token_nll(out.logits, CALIBRATION)) == pytest.approx(float(out.loss) * predicted,
                                                                                 rel=1e-5)


def test_the_model_is_left_as_it_was() -> None:
    model = tiny_model("llama")
    model.train()
    model.lm_head.weight.requires_grad_(False)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    requires = {name: p.requires_grad for name, p in model.named_parameters()}
    taylor_scores(model, CALIBRATION, batch_size=2)
    assert model.training
    for name, p in model.named_parameters():
        assert p.grad is None, name
        assert p.requires_grad == requires[name], name
        assert torch.equal(p, before[name]), name
    assert not any(p._post_accumulate_grad_hooks for p in model.parameters())  # hooks removed
