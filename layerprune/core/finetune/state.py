"""The training state a run carries from step to step and a checkpoint carries across processes.

``TrainingState`` holds the model's trainable parameters, the optimizer, the LR scheduler, the
number of optimizer steps done and the loss histories. The RNG state is the process's own
(python, numpy, torch, cuda): ``save`` captures it with the rest and ``restore`` sets it, so a
resumed run continues the same random stream (LoRA dropout) and equals an uninterrupted one.
The checkpoint layout is :mod:`.checkpoint`'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from layerprune.core.finetune import checkpoint as ckpt
from layerprune.core.finetune.methods import trainable_named_parameters
from layerprune.core.hooks import Hooks
from layerprune.core.spec import FinetuneSpec


def make_optimizer(params: list[nn.Parameter], spec: FinetuneSpec, paged_8bit: bool) -> torch.optim.Optimizer:
    if paged_8bit:
        import bitsandbytes as bnb  # noqa: PLC0415 - CUDA-only dependency

        return bnb.optim.PagedAdamW8bit(params, lr=spec.learning_rate, weight_decay=spec.weight_decay)
    return torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=spec.weight_decay)


@dataclass
class TrainingState:
    model: nn.Module
    named: list[tuple[str, nn.Parameter]]  # the trainable parameters, by name (a checkpoint's keys)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    fingerprint: str  # the run's settings; a checkpoint with another belongs to another run
    step: int = 0  # optimizer steps done
    history: list[dict[str, Any]] = field(default_factory=list)
    val_history: list[float | None] = field(default_factory=list)
    resumed_from: int | None = None

    @classmethod
    def create(cls, model: nn.Module, spec: FinetuneSpec, lr_lambda: Callable[[int], float], fingerprint: str,
               paged_8bit: bool = False) -> TrainingState:
        """Step 0: AdamW (or paged 8-bit AdamW) over the trainable parameters, the lr scaled by ``lr_lambda``."""
        named = trainable_named_parameters(model)
        optimizer = make_optimizer([p for _, p in named], spec, paged_8bit)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
        return cls(model, named, optimizer, scheduler, fingerprint)

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for _, p in self.named]

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def save(self, work_dir: Path, *, epoch: int, micro_batch_position: int) -> Path:
        """Checkpoint ``step_<step>`` (weights, optimizer, scheduler, RNG, histories)."""
        state = {"step": self.step, "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "rng": ckpt.rng_state(), "history": self.history, "val_history": self.val_history,
                 "fingerprint": self.fingerprint, "epoch": epoch, "micro_batch_position": micro_batch_position}
        return ckpt.save_checkpoint(work_dir, self.step, dict(self.named), state)

    def restore(self, path: Path) -> bool:
        """Load the checkpoint at ``path`` into this state; False (nothing loaded) when it is another run's."""
        weights, state = ckpt.load_checkpoint(path)
        if state.get("fingerprint") != self.fingerprint:
            return False
        by_name = dict(self.named)
        with torch.no_grad():
            for name, value in weights.items():
                by_name[name].copy_(value.to(by_name[name].device, by_name[name].dtype))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(state["rng"])
        self.history = list(state["history"])
        self.val_history = list(state.get("val_history", []))
        self.step = self.resumed_from = int(state["step"])
        return True

    def resume_latest(self, work_dir: Path, hooks: Hooks) -> None:
        """Restore the newest checkpoint in ``work_dir``; another run's checkpoints are moved aside."""
        latest = ckpt.latest_checkpoint(work_dir)
        if latest is None:
            return
        if self.restore(latest):
            hooks.info(f"resumed from checkpoint step {self.step}", step=self.step)
            return
        stale = work_dir / f"checkpoints.stale-{int(time.time())}"
        ckpt.checkpoints_dir(work_dir).rename(stale)
        hooks.warn("checkpoints in work_dir belong to other settings; starting afresh", moved_to=str(stale))
