"""The batched, prefix-sharing log-likelihood engine equals scoring each request alone, whole."""

from __future__ import annotations

import pytest
import torch

from layerprune.core.evaluate.loglik import encode_pair, loglikelihoods, model_max_length, prefix_token_id
from tests.tiny import tiny_model, tiny_tokenizer


def _naive(model, requests, max_length):
    out = []
    with torch.no_grad():
        for ctx, cont in requests:
            seq = (ctx + cont)[-(max_length + 1):]
            inp = torch.tensor([seq[:-1]])
            logp = torch.log_softmax(model(input_ids=inp).logits[0].float(), dim=-1)
            n = len(cont)
            tgt = torch.tensor(cont[-n:]).unsqueeze(-1)
            out.append(float(logp[-n:].gather(-1, tgt).sum()))
    return out


def _requests(tok):
    docs = [
        ("Question: What do plants need to grow?\nAnswer:", [" water", " sunlight and water", " rocks", " nothing"]),
        ("The river flows", [" into the sea.", " upward", " slowly"]),
        ("A", [" B", " C", " D"]),  # single-token context: nothing to share before the first scored token
        ("", [" an empty context", " another"]),  # lm-eval's prefix-token case
        ("Trailing space ", ["works", "here"]),  # the space moves to the continuation
        ("x" * 80, [" long context, truncated on the left"]),
    ]
    requests, groups = [], []
    for ctx, conts in docs:
        g = []
        for c in conts:
            g.append(len(requests))
            requests.append(encode_pair(tok, ctx, c))
        groups.append(g)
    # A "multiple input" group (WinoGrande-like): different contexts, the same continuation.
    g = []
    for ctx in ("Sarah was better than Maria so Sarah", "Sarah was better than Maria so Maria"):
        g.append(len(requests))
        requests.append(encode_pair(tok, ctx, " got the easier cases."))
    groups.append(g)
    # Different first tokens: no common prefix at all.
    g = []
    for ctx in ("Dogs bark", "Cats meow"):
        g.append(len(requests))
        requests.append(encode_pair(tok, ctx, " loudly"))
    groups.append(g)
    return requests, groups


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2", "gemma2", "gpt_neox"])
def test_engine_equals_naive_scoring(family: str) -> None:
    tok = tiny_tokenizer()
    model = tiny_model(family)
    requests, groups = _requests(tok)
    max_length = 24  # small, so the long request is truncated on the left as lm-eval does
    expected = _naive(model, requests, max_length)
    for batch_size in (1, 3, 16):
        for share in (True, False):
            got = loglikelihoods(model, requests, groups=groups, batch_size=batch_size, max_length=max_length,
                                 share_prefix=share)
            assert got == pytest.approx(expected, abs=2e-4), (batch_size, share)


def test_encode_pair_matches_lm_eval_rules() -> None:
    tok = tiny_tokenizer()
    ctx, cont = encode_pair(tok, "Question: why?\nAnswer: ", "because")
    whole = tok.encode("Question: why?\nAnswer: because")
    assert ctx == tok.encode("Question: why?\nAnswer:")
    assert ctx + cont == whole
    ctx, cont = encode_pair(tok, "", " hello")
    assert ctx == [prefix_token_id(tok)] and cont == tok.encode(" hello", add_special_tokens=False)


def test_model_max_length_follows_config() -> None:
    model = tiny_model("llama")
    assert model_max_length(model.config) == 512


def test_empty_continuation_is_refused() -> None:
    with pytest.raises(ValueError):
        loglikelihoods(tiny_model("llama"), [([1, 2], [])])
