"""taylor: Σ over a block's weights of |w · ∂L/∂w|, L = mean next-token CE on the calibration data.

One backward per calibration batch on the model's own parameters. Each weight's contribution is
taken the moment its gradient is ready (a post-accumulate-grad hook) and the gradient is dropped
right there, so at no point does a full set of gradients, let alone a second copy of the weights,
exist. Embeddings, lm_head and the final norm get no gradient at all (they are never ranked), and
biases are left out of the sum as the paper's definition counts weights only.
"""

from __future__ import annotations

import torch
from torch import nn

from layerprune.core.architecture import find_decoder_parts
from layerprune.core.hooks import NO_HOOKS, Hooks
from layerprune.core.scoring.capture import autocast_for, batches, input_device
from layerprune.core.scoring.magnitude import is_scored_weight


def taylor_scores(
    model: nn.Module, calibration: torch.Tensor, *, hooks: Hooks = NO_HOOKS, batch_size: int | None = None
) -> list[float]:
    layers = find_decoder_parts(model).layers
    layer_param_ids = {id(p) for layer in layers for p in layer.parameters()}
    was_training = model.training
    requires = {id(p): p.requires_grad for p in model.parameters()}
    totals = [torch.zeros((), dtype=torch.float64) for _ in layers]
    handles = []

    def make_hook(i: int, scored: bool):  # type: ignore[no-untyped-def]
        def hook(p: torch.Tensor) -> None:
            if scored:
                contribution = (p.detach().float() * p.grad.float()).abs().sum()
                totals[i] += contribution.double().cpu()
            p.grad = None

        return hook

    try:
        model.eval()  # dropout off: the score is of the model as it will run
        for p in model.parameters():
            p.requires_grad_(id(p) in layer_param_ids)
        for i, layer in enumerate(layers):
            for name, p in layer.named_parameters():
                handles.append(p.register_post_accumulate_grad_hook(make_hook(i, is_scored_weight(name))))
        chunks = batches(calibration, batch_size)
        for b, ids in enumerate(chunks):
            hooks.check()
            ids = ids.to(input_device(model))
            with torch.enable_grad(), autocast_for(model):
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            loss.backward()
            hooks.progress(b + 1, len(chunks), f"taylor: batch {b + 1}/{len(chunks)}")
    finally:
        for h in handles:
            h.remove()
        for p in model.parameters():
            p.requires_grad_(requires[id(p)])
            p.grad = None
        model.train(was_training)
    return [float(t) for t in totals]
