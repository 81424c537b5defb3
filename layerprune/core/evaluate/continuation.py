"""Log-likelihood of one continuation per context *and* whether greedy decoding would produce it.

lm-evaluation-harness's ``loglikelihood`` requests (LAMBADA's last word) return ``(ll, is_greedy)``:
``ll`` the summed log-softmax of the continuation's tokens, ``is_greedy`` whether the argmax at each
of those positions is the continuation's token (``HFLM._loglikelihood_tokens``). Requests are
encoded by :func:`loglik.encode_pair` (lm-eval's ``_encode_pair``), truncated the same way, sorted
longest first and left-padded so that only the scored positions' logits are computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from layerprune.core.evaluate.loglik import _left_padded, _pad_id, model_max_length
from layerprune.core.hooks import NO_HOOKS, Hooks


@torch.inference_mode()
def loglik_and_greedy(
    model: Any,
    requests: Sequence[tuple[list[int], list[int]]],
    *,
    batch_size: int = 16,
    max_length: int | None = None,
    hooks: Hooks = NO_HOOKS,
) -> list[tuple[float, bool]]:
    """``(sum log p(continuation | context), greedy decoding yields the continuation)`` per request."""
    if max_length is None:
        max_length = model_max_length(model.config)
    device = next(model.parameters()).device
    pad = _pad_id(model)
    items: list[tuple[list[int], list[int]]] = []
    for ctx, cont in requests:
        if not cont:
            raise ValueError("a continuation must have at least one token")
        seq = (list(ctx) + list(cont))[-(max_length + 1):]
        items.append((seq[:-1], list(cont)[-max_length:]))
    order = sorted(range(len(items)), key=lambda i: -len(items[i][0]))
    out: list[tuple[float, bool]] = [(float("nan"), False)] * len(items)
    for start in range(0, len(order), batch_size):
        hooks.check()
        chunk = order[start:start + batch_size]
        ids, mask, pos = _left_padded([items[i][0] for i in chunk], pad, [0] * len(chunk))
        k = max(len(items[i][1]) for i in chunk)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                       use_cache=False, logits_to_keep=k).logits
        for b, i in enumerate(chunk):
            targets = items[i][1]
            row = torch.log_softmax(logits[b, k - len(targets):, :].float(), dim=-1)
            tgt = torch.tensor(targets, device=row.device)
            ll = float(row.gather(-1, tgt.unsqueeze(-1)).sum())
            out[i] = (ll, bool((row.argmax(-1) == tgt).all()))
        hooks.progress(min(start + batch_size, len(order)), len(order), "scoring")
    return out
