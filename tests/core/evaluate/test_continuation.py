"""core.evaluate.continuation: ``(log p(continuation | context), is_greedy)`` per request, against
one unpadded forward per request written here (lm-eval's definition: the summed log-softmax of the
continuation's tokens, greedy when the argmax at each of those positions is that token)."""

from __future__ import annotations

import pytest
import torch

from layerprune.core.errors import Cancelled
from layerprune.core.evaluate.continuation import loglik_and_greedy
from layerprune.core.hooks import Hooks
from tests.tiny import VOCAB, tiny_model
from tests.torch_threads import one_thread  # noqa: F401


@pytest.fixture(scope="module")
def models():  # type: ignore[no-untyped-def]
    return {family: tiny_model(family) for family in ("llama", "gpt2")}


def reference(model, ctx: list[int], cont: list[int], max_length: int) -> tuple[float, bool]:
    seq = (ctx + cont)[-(max_length + 1):]
    inp = torch.tensor([seq[:-1]])
    with torch.no_grad():
        logits = model(input_ids=inp, use_cache=False).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    total, greedy = 0.0, True
    n = len(seq) - 1
    for j, token in enumerate(cont[-max_length:]):
        row = logp[n - len(cont[-max_length:]) + j]
        total += float(row[token])
        greedy = greedy and int(row.argmax()) == token
    return total, greedy


def greedy_tokens(model, ctx: list[int], n: int) -> list[int]:
    """The model's own greedy continuation, one full forward per token."""
    seq = list(ctx)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1].argmax()))
    return seq[len(ctx):]


def requests(model) -> list[tuple[list[int], list[int]]]:
    g = torch.Generator().manual_seed(0)

    def rand(n: int) -> list[int]:
        return torch.randint(3, VOCAB, (n,), generator=g).tolist()

    ctx = rand(9)
    return [(rand(5), rand(1)), (rand(17), rand(3)), (ctx, greedy_tokens(model, ctx, 3)), (rand(2), rand(6)),
            (rand(11), rand(2))]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("batch_size", [1, 2, 16])
def test_loglik_and_greedy_equal_an_unpadded_forward_per_request(family: str, batch_size: int, models) -> None:
    model = models[family]
    reqs = requests(model)
    out = loglik_and_greedy(model, reqs, batch_size=batch_size)
    assert len(out) == len(reqs)
    for (ctx, cont), (ll, greedy) in zip(reqs, out, strict=True):
        ref_ll, ref_greedy = reference(model, ctx, cont, 512)
        assert ll == pytest.approx(ref_ll, abs=2e-4)
        assert greedy == ref_greedy
    assert out[2][1] is True  # the model's own greedy continuation
    assert sum(g for _, g in out) < len(out)  # random continuations are not


def test_long_requests_are_truncated_from_the_left(models) -> None:
    model = models["llama"]
    reqs = [(list(range(3, 40)), [7, 8, 9]), (list(range(3, 10)), list(range(50, 70)))]
    out = loglik_and_greedy(model, reqs, batch_size=2, max_length=12)
    for (ctx, cont), (ll, _) in zip(reqs, out, strict=True):
        assert ll == pytest.approx(reference(model, ctx, cont, 12)[0], abs=2e-4)


def test_an_empty_continuation_is_refused(models) -> None:
    with pytest.raises(ValueError, match="at least one token"):
        loglik_and_greedy(models["llama"], [([5, 6], [])])


def test_progress_is_reported_per_batch_and_a_cancel_stops_it(models) -> None:
    model = models["llama"]
    seen: list[tuple[float, float]] = []
    loglik_and_greedy(model, requests(model), batch_size=2, hooks=Hooks(progress=lambda d, t, m: seen.append((d, t))))
    assert seen == [(2, 5), (4, 5), (5, 5)]
    with pytest.raises(Cancelled):
        loglik_and_greedy(model, requests(model), hooks=Hooks(should_stop=lambda: True))
