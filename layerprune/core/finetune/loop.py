"""The one training loop: epochs → optimizer steps → micro-steps, top to bottom.

Per optimizer step: ``accumulation_steps`` micro-batches (a cancel check before each), the loss
normalised by the step's total target tokens (so accumulation equals one big batch), gradient
clipping at ``max_grad_norm``, AdamW step, scheduler step, then metrics/progress, a checkpoint
every ``checkpoint_every`` steps and a validation pass at each epoch's end.

Learning rate: linear warm-up over ``warmup_steps`` then linear decay to zero at the last step,
the schedule of the Hugging Face Trainer that the paper's code uses (shifted by one step so the
first step does not run at lr 0).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from layerprune.core.architecture import text_config
from layerprune.core.errors import TrainingDivergedError
from layerprune.core.finetune import checkpoint as ckpt
from layerprune.core.finetune.data import (
    IGNORE,
    collate,
    epoch_order,
    make_micro_batches,
    target_count,
)
from layerprune.core.finetune.distill import Distiller, capture_output, positions_of
from layerprune.core.finetune.methods import PartialPlan, set_train_mode, trainable_named_parameters
from layerprune.core.finetune.trunk_cache import (
    TrunkCache,
    capture_input,
    memory_limit_from_env,
    record_arity,
    replay,
)
from layerprune.core.hooks import Hooks
from layerprune.core.spec import FinetuneSpec


@dataclass
class TrainOutcome:
    steps: int
    total_steps: int
    epochs: float
    final_loss: float
    val_loss: float | None
    tokens_per_s: float
    history: list[dict[str, Any]]
    resumed_from_step: int | None
    timings: dict[str, float] = field(default_factory=dict)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (0-based)."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy over target positions (labels -100 are skipped)."""
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:].to(shift_logits.device)
    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")


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


def make_optimizer(params: list[nn.Parameter], spec: FinetuneSpec, paged_8bit: bool) -> torch.optim.Optimizer:
    if paged_8bit:
        import bitsandbytes as bnb  # noqa: PLC0415 - CUDA-only dependency

        return bnb.optim.PagedAdamW8bit(params, lr=spec.learning_rate, weight_decay=spec.weight_decay)
    return torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=spec.weight_decay)


def _move(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


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
            batch = _move(collate(chunk, pad_id), device)
            forward = Forward(model, None, None, hooks, autocast_dtype, device)
            logits = forward(None, batch)
            total += float(loss_sum(logits, batch["labels"]))
            count += sum(target_count(e) for e in chunk)
    for m, flag in was_training.items():
        m.train(flag)
    return total / max(count, 1)


def train(model: nn.Module, plan: PartialPlan | None, train_examples: list[dict[str, list[int]]],
          val_examples: list[dict[str, list[int]]], spec: FinetuneSpec, work_dir: Path, hooks: Hooks,
          device: torch.device, *, pad_id: int, fingerprint: str, paged_8bit: bool = False,
          autocast_dtype: torch.dtype | None = None, cache_memory_limit: int | None = None,
          load_teacher: Callable[[], nn.Module] | None = None,
          student_last_layer: nn.Module | None = None) -> TrainOutcome:
    """Train ``model`` in place; resumes from the latest checkpoint in ``work_dir`` that matches.

    With ``spec.objective == "distill"``, ``load_teacher`` (returns the frozen teacher; called here
    so that the distiller holds the only reference) and the student's last decoder layer (for the
    hidden-state term) are required; see :mod:`.distill`.
    """
    timings: dict[str, float] = {}
    mbs = make_micro_batches(len(train_examples), spec.micro_batch_size, spec.seed)
    accum = spec.accumulation_steps
    steps_per_epoch = math.ceil(len(mbs) / accum)
    total_steps = math.ceil(steps_per_epoch * spec.epochs)
    if spec.max_steps is not None:
        total_steps = min(total_steps, spec.max_steps)
    total_steps = max(total_steps, 1)
    named = trainable_named_parameters(model)
    params = [p for _, p in named]
    optimizer = make_optimizer(params, spec, paged_8bit)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, spec.warmup_steps, total_steps)
    )

    # (examples, longest sequence) of each micro-batch: the shape of its cache entries.
    batch_shapes = {mb.index: (len(mb.examples), max(len(train_examples[i]["input_ids"]) for i in mb.examples))
                    for mb in mbs}
    memory_limit = memory_limit_from_env() if cache_memory_limit is None else cache_memory_limit
    cache: TrunkCache | None = None
    if plan is not None and spec.cache_trunk:
        hidden = int(text_config(model.config).hidden_size)  # type: ignore[attr-defined]
        cache = TrunkCache({i: (b, t, hidden) for i, (b, t) in batch_shapes.items()}, device, work_dir, memory_limit)
    forward = Forward(model, plan, cache, hooks, autocast_dtype, device)
    distiller: Distiller | None = None
    if spec.objective == "distill":
        if load_teacher is None or student_last_layer is None:
            raise ValueError("objective 'distill' needs the teacher and the student's last layer")
        # The teacher's targets depend on the input alone, whatever the method: cache_trunk caches them too.
        distiller = Distiller(load_teacher(), spec, student_last_layer, device, hooks,
                              cache_shapes=batch_shapes if spec.cache_trunk else None, work_dir=work_dir,
                              memory_limit=memory_limit)

    # Seed, then let a checkpoint overwrite the RNG states: a resumed run continues the same stream.
    torch.manual_seed(spec.seed)
    history: list[dict[str, Any]] = []
    val_history: list[float | None] = []
    start_step = 0
    resumed_from: int | None = None
    latest = ckpt.latest_checkpoint(work_dir)
    if latest is not None:
        weights, state = ckpt.load_checkpoint(latest)
        if state.get("fingerprint") != fingerprint:
            stale = work_dir / f"checkpoints.stale-{int(time.time())}"
            ckpt.checkpoints_dir(work_dir).rename(stale)
            hooks.warn("checkpoints in work_dir belong to other settings; starting afresh", moved_to=str(stale))
        else:
            by_name = dict(named)
            with torch.no_grad():
                for name, value in weights.items():
                    by_name[name].copy_(value.to(by_name[name].device, by_name[name].dtype))
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            ckpt.set_rng_state(state["rng"])
            history = list(state["history"])
            val_history = list(state.get("val_history", []))
            start_step = resumed_from = int(state["step"])
            hooks.info(f"resumed from checkpoint step {start_step}", step=start_step)

    set_train_mode(model, plan)
    optimizer.zero_grad(set_to_none=True)
    run_start = time.perf_counter()
    run_tokens = 0
    val_loss: float | None = val_history[-1] if val_history else None
    for step in range(start_step, total_steps):
        t0 = time.perf_counter()
        epoch, pos = divmod(step, steps_per_epoch)
        order = epoch_order(len(mbs), spec.seed, epoch)
        chosen = order[pos * accum : (pos + 1) * accum]
        targets = sum(target_count(train_examples[i]) for m in chosen for i in mbs[m].examples)
        positions = sum(positions_of(train_examples[i]) for m in chosen for i in mbs[m].examples)
        step_loss, step_tokens = 0.0, 0
        parts = {"ce": 0.0, "kl": 0.0, "hidden": 0.0}
        hits_before = forward.hits
        teacher_hits_before = distiller.hits if distiller is not None else 0
        for m in chosen:
            hooks.check()
            examples = [train_examples[i] for i in mbs[m].examples]
            batch = _move(collate(examples, pad_id), device)
            with capture_output(distiller.student_last_layer if distiller and distiller.beta > 0 else None) as box:
                logits = forward(m, batch)
            ce = loss_sum(logits, batch["labels"])
            if distiller is None:
                loss = ce / max(targets, 1)
            else:
                kl, hid = distiller.terms(m, batch, logits, box.get("hidden"))
                loss = distiller.combine(ce, kl, hid, targets, positions)
                parts["ce"] += float(ce.detach() / max(targets, 1))
                parts["kl"] += float(kl.detach() / max(positions, 1)) if kl is not None else 0.0
                parts["hidden"] += float(hid.detach() / max(positions, 1)) if hid is not None else 0.0
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingDivergedError(
                    f"the loss became {value} at step {step + 1} (epoch {epoch + 1}); lower learning_rate "
                    f"(now {spec.learning_rate}) or check the data", param="finetune.learning_rate")
            loss.backward()
            step_loss += value
            step_tokens += int(batch["attention_mask"].sum())
        if spec.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, spec.max_grad_norm)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        run_tokens += step_tokens
        done = step + 1
        elapsed = time.perf_counter() - run_start
        tps = step_tokens / dt if dt > 0 else 0.0
        eta = elapsed / (done - start_step) * (total_steps - done)
        entry = {"step": done, "total_steps": total_steps, "epoch": done / steps_per_epoch, "loss": step_loss,
                 "lr": lr, "tokens_per_s": tps, "eta_s": eta, "tokens": step_tokens, "time_s": dt,
                 "cached": forward.hits - hits_before == len(chosen)}
        if distiller is not None:
            entry.update(parts)  # the unweighted terms: CE per target token, KL and 1 - cos per position
            entry["teacher_cached"] = distiller.hits - teacher_hits_before == len(chosen)
        history.append(entry)
        hooks.metrics({k: entry[k] for k in ("step", "total_steps", "epoch", "loss", "lr", "tokens_per_s", "eta_s")})
        hooks.progress(done, total_steps, f"step {done}/{total_steps} loss {step_loss:.4f}")
        if done % steps_per_epoch == 0 or done == total_steps:
            t_val = time.perf_counter()
            val_loss = evaluate_loss(model, val_examples, spec.micro_batch_size, pad_id, device, hooks, autocast_dtype)
            set_train_mode(model, plan)
            val_history.append(val_loss)
            timings["validate"] = timings.get("validate", 0.0) + time.perf_counter() - t_val
            if val_loss is not None:
                entry["val_loss"] = val_loss
        if done % spec.checkpoint_every == 0 and done < total_steps:
            t_ck = time.perf_counter()
            state = {"step": done, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "rng": ckpt.rng_state(), "history": history, "val_history": val_history,
                     "fingerprint": fingerprint, "epoch": epoch, "micro_batch_position": (pos + 1) * accum}
            ckpt.save_checkpoint(work_dir, done, {n: p for n, p in named}, state)
            timings["checkpoint"] = timings.get("checkpoint", 0.0) + time.perf_counter() - t_ck
    train_time = time.perf_counter() - run_start
    timings["train"] = train_time
    if cache is not None:
        timings["trunk_cache_bytes"] = float(cache.nbytes)
        cache.close()
    if distiller is not None:
        if distiller.cached:
            timings["teacher_cache_bytes"] = float(distiller.nbytes)
        distiller.close()
    model.eval()
    return TrainOutcome(
        steps=total_steps, total_steps=total_steps, epochs=total_steps / steps_per_epoch,
        final_loss=float(history[-1]["loss"]) if history else float("nan"), val_loss=val_loss,
        tokens_per_s=run_tokens / train_time if train_time > 0 else 0.0, history=history,
        resumed_from_step=resumed_from, timings=timings,
    )
