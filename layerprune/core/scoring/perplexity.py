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
from layerprune.core.scoring.capture import autocast_for, batches, capture, input_device, layer_device


def next_token_nll(logits: torch.Tensor, ids: torch.Tensor) -> tuple[float, int]:
    """Summed next-token negative log-likelihood (fp32) and the number of predicted tokens."""
    ids = ids.to(logits.device)
    shifted = logits[:, :-1, :].float().reshape(-1, logits.shape[-1])
    target = ids[:, 1:].reshape(-1)
    nll = torch.nn.functional.cross_entropy(shifted, target, reduction="sum")
    return float(nll), int(target.numel())


# Logits elements :func:`head_nll` computes at once (64M fp32 = 256 MB): a cap on memory for large
# vocabularies and batches, not a speed trick. Smaller chunks were measured slower on CPU (the
# matmul loses efficiency: 0.70 s at 4M against 0.56 s at 64M for the bundled model's head).
_HEAD_CHUNK_ELEMENTS = 64 * 1024 * 1024


def head_nll(model: nn.Module, hidden: torch.Tensor, ids: torch.Tensor) -> tuple[float, int]:
    """Summed next-token NLL of final norm + lm_head on ``hidden``, and the number of predictions.

    Final norm, lm_head and (Gemma 2) the final logit soft-capping, as the model's forward does, so
    on the last block's output this equals ``next_token_nll`` of the model's logits up to float
    rounding. The head runs only on the positions that predict something, so no copy of the logits is made to drop
    the last position (0.56 s against 0.63 s a call on the bundled model), and in token chunks, so
    the [B, S, vocab] logits of a large batch never exist at once.
    """
    parts = find_decoder_parts(model)
    h = hidden[:, :-1]
    if parts.final_norm is not None:
        h = parts.final_norm(h.to(layer_device(parts.final_norm)))
    h = h.reshape(-1, h.shape[-1]).to(parts.lm_head.weight.device)
    target = ids[:, 1:].reshape(-1).to(h.device)
    cap = getattr(text_config(model.config), "final_logit_softcapping", None)
    step = max(1, _HEAD_CHUNK_ELEMENTS // int(parts.lm_head.weight.shape[0]))
    total = torch.zeros((), dtype=torch.float64, device=h.device)
    for start in range(0, h.shape[0], step):
        logits = parts.lm_head(h[start : start + step])
        if cap:  # Gemma 2's final soft-capping, in the model's dtype as its forward does
            logits = torch.tanh(logits / cap) * cap
        total += torch.nn.functional.cross_entropy(logits.float(), target[start : start + step], reduction="sum")
    return float(total), int(target.numel())


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
                batch_nll, n = head_nll(model, hidden, ids)
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
            # What a real removal does to the structure (docs/methods.md §2), minus cache indices,
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
