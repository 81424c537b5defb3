"""taylor: Σ over a block's weights of |w · ∂L/∂w|, L = mean next-token CE over the whole calibration set.

L is one number for the whole calibration set — the summed token NLL of every window divided by the
number of predicted tokens — so its gradient does not depend on how the windows are split into
batches: batch b contributes ∂(its summed NLL)/∂w / N_total, a last, shorter batch weighs exactly
its share of tokens, and the signed salience w·∂L/∂w is summed across batches with the absolute
value taken once, at the end (as the paper defines it and its reference code computes it). Summing
|w·g| per backward instead makes the score depend on ``calibration.batch_size``.

Memory: each weight's gradient is taken the moment it is ready (a post-accumulate-grad hook) and
dropped right there. With more than one batch the signed gradient of the batches so far is kept in
one fp32 buffer per scored weight (the same size as a set of fp32 gradients of the blocks); on the
last batch the score is finished weight by weight and each buffer freed as soon as it is used. With
one batch no buffer exists. Embeddings, lm_head and the final norm get no gradient at all (they are
never ranked), and biases are left out as the paper's definition counts weights only. The sums are
taken in float64.
"""

from __future__ import annotations

import torch
from torch import nn

from layerprune.core.architecture import find_decoder_parts
from layerprune.core.hooks import NO_HOOKS, Hooks
from layerprune.core.scoring.capture import autocast_for, batches, input_device
from layerprune.core.scoring.magnitude import is_scored_weight


def summed_next_token_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Σ next-token CE over every predicted position (fp32), differentiable."""
    shifted = logits[:, :-1, :].float().reshape(-1, logits.shape[-1])
    target = ids[:, 1:].reshape(-1).to(shifted.device)
    return torch.nn.functional.cross_entropy(shifted, target, reduction="sum")


def taylor_scores(
    model: nn.Module, calibration: torch.Tensor, *, hooks: Hooks = NO_HOOKS, batch_size: int | None = None
) -> list[float]:
    layers = find_decoder_parts(model).layers
    layer_param_ids = {id(p) for layer in layers for p in layer.parameters()}
    was_training = model.training
    requires = {id(p): p.requires_grad for p in model.parameters()}
    totals = [torch.zeros((), dtype=torch.float64) for _ in layers]
    chunks = batches(calibration, batch_size)
    # Every window has the same length, so each predicts seq_len − 1 tokens.
    total_tokens = calibration.shape[0] * (calibration.shape[1] - 1)
    # id(weight) -> (layer, weight, Σ ∂L/∂w over the batches so far in fp32), until the last batch.
    pending: dict[int, tuple[int, torch.Tensor, torch.Tensor]] = {}
    state = {"last": False}
    handles = []

    def add_salience(i: int, p: torch.Tensor, grad: torch.Tensor) -> None:
        salience = p.detach().float() * grad
        totals[i] += salience.abs().sum(dtype=torch.float64).cpu()

    def make_hook(i: int, scored: bool):  # type: ignore[no-untyped-def]
        def hook(p: torch.Tensor) -> None:
            if scored:
                grad = p.grad.float()
                so_far = pending.pop(id(p), None)
                if so_far is not None:
                    grad = grad + so_far[2]
                if state["last"]:
                    add_salience(i, p, grad)
                else:
                    pending[id(p)] = (i, p, grad)
            p.grad = None

        return hook

    try:
        model.eval()  # dropout off: the score is of the model as it will run
        for p in model.parameters():
            p.requires_grad_(id(p) in layer_param_ids)
        for i, layer in enumerate(layers):
            for name, p in layer.named_parameters():
                handles.append(p.register_post_accumulate_grad_hook(make_hook(i, is_scored_weight(name))))
        for b, ids in enumerate(chunks):
            hooks.check()
            state["last"] = b == len(chunks) - 1
            ids = ids.to(input_device(model))
            with torch.enable_grad(), autocast_for(model):
                logits = model(input_ids=ids, use_cache=False).logits
            # This batch's share of the mean loss: its summed NLL over ALL predicted tokens.
            loss = summed_next_token_nll(logits, ids) / total_tokens
            del logits
            loss.backward()
            hooks.progress(b + 1, len(chunks), f"taylor: batch {b + 1}/{len(chunks)}")
        # A weight the last batch gave no gradient (none in a dense model) still has the earlier ones.
        for i, p, grad in list(pending.values()):
            add_salience(i, p, grad)
    finally:
        pending.clear()
        for h in handles:
            h.remove()
        for p in model.parameters():
            p.requires_grad_(requires[id(p)])
            p.grad = None
        model.train(was_training)
    return [float(t) for t in totals]
