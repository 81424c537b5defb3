"""The forward pass of training and validation: logits through the frozen-trunk cache, the loss sum.

``Forward`` runs a micro-batch under autocast where the run uses mixed precision; with a trunk
cache (method "partial") it records the first frozen layer's input on a micro-batch's first
visit and replays the trainable layers on top of it afterwards.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from layerprune.core.finetune.data import IGNORE, collate, target_count
from layerprune.core.finetune.methods import PartialPlan
from layerprune.core.finetune.trunk_cache import TrunkCache, capture_input, record_arity, replay
from layerprune.core.hooks import Hooks


def loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy over target positions (labels -100 are skipped)."""
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:].to(shift_logits.device)
    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")


def move(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


class Forward:
    """Logits of a micro-batch, through the trunk cache when there is one."""

    def __init__(self, model: nn.Module, plan: PartialPlan | None, cache: TrunkCache | None, hooks: Hooks,
                 autocast_dtype: torch.dtype | None, device: torch.device) -> None:
        self.model = model
        self.plan = plan
        self.cache = cache
        self.hooks = hooks
        self.autocast_dtype = autocast_dtype
        self.device = device
        self.arity = 0
        self.hits = 0

    def _run(self, kwargs: dict[str, Any]) -> torch.Tensor:
        # Mixed precision: half-precision matmuls, fp32 trainable (master) weights and loss.
        if self.autocast_dtype is None:
            return self.model(**kwargs).logits
        with torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype):
            return self.model(**kwargs).logits

    def __call__(self, index: int | None, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
        if self.cache is None or self.plan is None or index is None:
            return self._run(kwargs)
        hidden = self.cache.get(index)
        if hidden is None:
            first_frozen = self.plan.frozen_layers[0] if self.plan.frozen_layers else None
            with capture_input(self.plan.cache_point) as box, record_arity(first_frozen) as arity:
                logits = self._run(kwargs)
            first = self.cache.dtype is None
            self.cache.put(index, box["hidden"])
            if first:
                self.hooks.info("frozen-trunk cache", bytes=self.cache.nbytes, on_disk=self.cache.on_disk,
                                dtype=str(self.cache.dtype))
            self.arity = arity.get("arity", self.arity)
            return logits
        self.hits += 1
        with replay(self.plan.frozen_layers, self.plan.cache_point, hidden, self.arity):
            return self._run(kwargs)


def evaluate_loss(model: nn.Module, examples: list[dict[str, list[int]]], micro_batch_size: int, pad_id: int,
                  device: torch.device, hooks: Hooks, autocast_dtype: torch.dtype | None = None) -> float | None:
    """Mean target-token loss over ``examples`` (no gradients, eval mode)."""
    if not examples:
        return None
    was_training = {m: m.training for m in model.modules()}
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), micro_batch_size):
            hooks.check()
            chunk = examples[start : start + micro_batch_size]
            batch = move(collate(chunk, pad_id), device)
            forward = Forward(model, None, None, hooks, autocast_dtype, device)
            logits = forward(None, batch)
            total += float(loss_sum(logits, batch["labels"]))
            count += sum(target_count(e) for e in chunk)
    for m, flag in was_training.items():
        m.train(flag)
    return total / max(count, 1)
