"""ppl: the calibration perplexity of the model with only layer i removed (lower = removed first).

Shared prefix: removing layer i leaves layers 0..i−1 unchanged, so their outputs are computed once.
One captured forward per batch (through layers 0..L−2) stores every block's input x_i; evaluation i then runs layers
i+1..L−1 from x_i, then final norm + lm_head → cross-entropy. That is exactly L evaluations of
(L−1)-layer models per batch, costing L(L−1)/2 block calls instead of L(L−1), plus L lm_heads
(:func:`shared_prefix_cost_ratio` gives the bound). :func:`naive_ppl_scores` runs the L full
forwards of a model with one layer taken out: the reference the tests and the bench compare to.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from layerprune.core.architecture import find_decoder_parts, layer_count_key, text_config
from layerprune.core.hooks import NO_HOOKS, Hooks
from layerprune.core.scoring.capture import autocast_for, batches, capture, head_logits, input_device


def next_token_nll(logits: torch.Tensor, ids: torch.Tensor) -> tuple[float, int]:
    """Summed next-token negative log-likelihood (fp32) and the number of predicted tokens."""
    ids = ids.to(logits.device)
    shifted = logits[:, :-1, :].float().reshape(-1, logits.shape[-1])
    target = ids[:, 1:].reshape(-1)
    nll = torch.nn.functional.cross_entropy(shifted, target, reduction="sum")
    return float(nll), int(target.numel())


def ppl_scores(
    model: nn.Module, calibration: torch.Tensor, *, hooks: Hooks = NO_HOOKS, batch_size: int | None = None
) -> list[float]:
    num_layers = len(find_decoder_parts(model).layers)
    nll = [0.0] * num_layers
    tokens = 0
    chunks = batches(calibration, batch_size)
    total = len(chunks) * num_layers
    done = 0
    for ids in chunks:
        hooks.check()
        cap = capture(model, ids)
        with torch.no_grad(), autocast_for(model):
            for i in range(num_layers):
                hooks.check()
                hidden = cap.inputs[i]
                for j in range(i + 1, num_layers):
                    hidden = cap.calls[j].run(hidden)
                batch_nll, n = next_token_nll(head_logits(model, hidden), ids)
                nll[i] += batch_nll
                done += 1
                hooks.progress(done, total, f"ppl: without layer {i} ({done}/{total})")
        tokens += n
        del cap
    return [math.exp(v / tokens) for v in nll]


def naive_ppl_scores(model: nn.Module, calibration: torch.Tensor, *, batch_size: int | None = None) -> list[float]:
    """L independent full forwards, each of the model with one layer taken out (the slow reference)."""
    parts = find_decoder_parts(model)
    parent_path, _, attr = parts.layers_path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    cfg = text_config(model.config)
    count_key = layer_count_key(model.config)
    original = parts.layers
    num_layers = len(original)
    layer_types = getattr(cfg, "layer_types", None)
    scores: list[float] = []
    try:
        for i in range(num_layers):
            keep = [j for j in range(num_layers) if j != i]
            # What a real removal does to the structure (shared/METHODS.md §2), minus cache indices,
            # which a cache-free forward never reads.
            setattr(parent, attr, nn.ModuleList([original[j] for j in keep]))
            setattr(cfg, count_key, num_layers - 1)
            if isinstance(layer_types, list) and len(layer_types) == num_layers:
                cfg.layer_types = [layer_types[j] for j in keep]
            nll, tokens = 0.0, 0
            for ids in batches(calibration, batch_size):
                with torch.no_grad(), autocast_for(model):
                    logits = model(input_ids=ids.to(input_device(model)), use_cache=False).logits
                b_nll, n = next_token_nll(logits, ids)
                nll += b_nll
                tokens += n
            scores.append(math.exp(nll / tokens))
    finally:
        setattr(parent, attr, original)
        setattr(cfg, count_key, num_layers)
        if isinstance(layer_types, list):
            cfg.layer_types = layer_types
    return scores


def shared_prefix_cost_ratio(model: nn.Module, seq_len: int) -> float:
    """Bound on shared-prefix time / naive time from per-token FLOPs of one block and of lm_head.

    Naive: L × ((L−1)·c + h). Shared: (L−1)·c (the prefix) + Σ_i (L−1−i)·c + L·h, where c is
    one block's cost (2·params + attention's 2·seq·hidden·2 per token) and h lm_head's (2·params).
    """
    parts = find_decoder_parts(model)
    num_layers = len(parts.layers)
    hidden = int(parts.embeddings.weight.shape[1])
    block_params = sum(p.numel() for p in parts.layers[0].parameters())
    c = 2.0 * block_params + 4.0 * seq_len * hidden
    h = 2.0 * parts.lm_head.weight.numel()
    naive = num_layers * ((num_layers - 1) * c + h)
    shared = (num_layers - 1) * c + num_layers * (num_layers - 1) / 2 * c + num_layers * h
    return shared / naive
