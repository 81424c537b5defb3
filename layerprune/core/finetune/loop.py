"""The one training loop: epochs → optimizer steps → micro-steps, top to bottom.

Per optimizer step (:func:`train`'s loop body, one function each): ``accumulation_steps``
micro-batches forward and backward (a cancel check before each), the loss normalised by the
step's total target tokens (so accumulation equals one big batch); gradient clipping at
``max_grad_norm``, AdamW step, scheduler step; metrics and progress; a validation pass at each
epoch's end; a checkpoint every ``checkpoint_every`` steps. What carries from step to step is one
:class:`~.state.TrainingState`, which is also what a checkpoint saves and a resumed run restores.

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
from torch import nn

from layerprune.core.architecture import text_config
from layerprune.core.errors import TrainingDivergedError
from layerprune.core.finetune.data import MicroBatch, collate, epoch_order, make_micro_batches, target_count
from layerprune.core.finetune.distill import Distiller, capture_output, positions_of
from layerprune.core.finetune.forward import Forward, evaluate_loss, loss_sum, move
from layerprune.core.finetune.methods import PartialPlan, set_train_mode
from layerprune.core.finetune.state import TrainingState
from layerprune.core.finetune.trunk_cache import TrunkCache, memory_limit_from_env
from layerprune.core.hooks import Hooks
from layerprune.core.spec import FinetuneSpec

Example = dict[str, list[int]]


@dataclass(frozen=True)
class TrainConfig:
    """How to run: the spec and where the run lives and computes; the model and data come apart."""

    spec: FinetuneSpec
    work_dir: Path  # checkpoints and the memory-mapped caches
    device: torch.device
    pad_id: int
    fingerprint: str  # the run's settings (a checkpoint resumes only a run with the same)
    paged_8bit: bool = False  # QLoRA: bitsandbytes' paged 8-bit AdamW
    autocast_dtype: torch.dtype | None = None  # mixed precision: forward passes under autocast
    cache_memory_limit: int | None = None  # bytes of cache held in memory (default: from the environment)


@dataclass(frozen=True)
class Teacher:
    """Objective "distill": ``load`` returns the frozen teacher (called by :func:`train`, so that the
    distiller holds the only reference); the student's last decoder layer gives the hidden term."""

    load: Callable[[], nn.Module]
    student_last_layer: nn.Module


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


@dataclass(frozen=True)
class Schedule:
    """Which micro-batches each optimizer step takes: fixed micro-batches, shuffled per epoch by
    (seed, epoch), so a resumed run finds its data position from the step alone."""

    micro_batches: list[MicroBatch]
    accumulation: int
    steps_per_epoch: int
    total_steps: int
    seed: int

    @classmethod
    def of(cls, num_examples: int, spec: FinetuneSpec) -> Schedule:
        mbs = make_micro_batches(num_examples, spec.micro_batch_size, spec.seed)
        steps_per_epoch = math.ceil(len(mbs) / spec.accumulation_steps)
        total = math.ceil(steps_per_epoch * spec.epochs)
        if spec.max_steps is not None:
            total = min(total, spec.max_steps)
        return cls(mbs, spec.accumulation_steps, steps_per_epoch, max(total, 1), spec.seed)

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, optimizer step within the epoch) of the 0-based ``step``."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        return epoch, pos

    def chosen(self, step: int) -> list[int]:
        """The micro-batch indices of the 0-based ``step``."""
        epoch, pos = self.position(step)
        order = epoch_order(len(self.micro_batches), self.seed, epoch)
        return order[pos * self.accumulation : (pos + 1) * self.accumulation]

    def ends_epoch(self, done: int) -> bool:
        return done % self.steps_per_epoch == 0 or done == self.total_steps


@dataclass
class StepLoss:
    """One optimizer step's forward/backward: the loss (normalised as the objective defines) and the
    unweighted distillation terms, the tokens seen and whether every micro-batch hit the caches."""

    loss: float = 0.0
    tokens: int = 0
    parts: dict[str, float] = field(default_factory=lambda: {"ce": 0.0, "kl": 0.0, "hidden": 0.0})
    cached: bool = False
    teacher_cached: bool = False


def open_caches(model: nn.Module, plan: PartialPlan | None, examples: list[Example], schedule: Schedule,
                config: TrainConfig, hooks: Hooks, teacher: Teacher | None) -> tuple[TrunkCache | None, Distiller | None]:
    """The frozen-trunk cache (method "partial" with cache_trunk) and the distiller (objective "distill")."""
    spec = config.spec
    # (examples, longest sequence) of each micro-batch: the shape of its cache entries.
    batch_shapes = {mb.index: (len(mb.examples), max(len(examples[i]["input_ids"]) for i in mb.examples))
                    for mb in schedule.micro_batches}
    memory_limit = memory_limit_from_env() if config.cache_memory_limit is None else config.cache_memory_limit
    cache: TrunkCache | None = None
    if plan is not None and spec.cache_trunk:
        hidden = int(text_config(model.config).hidden_size)  # type: ignore[attr-defined]
        cache = TrunkCache({i: (b, t, hidden) for i, (b, t) in batch_shapes.items()}, config.device,
                           config.work_dir, memory_limit)
    distiller: Distiller | None = None
    if spec.objective == "distill":
        if teacher is None:
            raise ValueError("objective 'distill' needs the teacher and the student's last layer")
        # The teacher's targets depend on the input alone, whatever the method: cache_trunk caches them too.
        distiller = Distiller(teacher.load(), spec, teacher.student_last_layer, config.device, hooks,
                              cache_shapes=batch_shapes if spec.cache_trunk else None, work_dir=config.work_dir,
                              memory_limit=memory_limit)
    return cache, distiller


def accumulate_gradients(step: int, schedule: Schedule, examples: list[Example], forward: Forward,
                         distiller: Distiller | None, config: TrainConfig, hooks: Hooks) -> StepLoss:
    """Forward and backward over the micro-batches of optimizer step ``step`` (0-based)."""
    chosen = schedule.chosen(step)
    mbs = schedule.micro_batches
    targets = sum(target_count(examples[i]) for m in chosen for i in mbs[m].examples)
    positions = sum(positions_of(examples[i]) for m in chosen for i in mbs[m].examples)
    out = StepLoss()
    hits_before = forward.hits
    teacher_hits_before = distiller.hits if distiller is not None else 0
    for m in chosen:
        hooks.check()
        batch = move(collate([examples[i] for i in mbs[m].examples], config.pad_id), config.device)
        with capture_output(distiller.student_last_layer if distiller and distiller.beta > 0 else None) as box:
            logits = forward(m, batch)
        ce = loss_sum(logits, batch["labels"])
        if distiller is None:
            loss = ce / max(targets, 1)
        else:
            kl, hid = distiller.terms(m, batch, logits, box.get("hidden"))
            loss = distiller.combine(ce, kl, hid, targets, positions)
            out.parts["ce"] += float(ce.detach() / max(targets, 1))
            out.parts["kl"] += float(kl.detach() / max(positions, 1)) if kl is not None else 0.0
            out.parts["hidden"] += float(hid.detach() / max(positions, 1)) if hid is not None else 0.0
        value = float(loss.detach())
        if not math.isfinite(value):
            epoch, _ = schedule.position(step)
            raise TrainingDivergedError(
                f"the loss became {value} at step {step + 1} (epoch {epoch + 1}); lower learning_rate "
                f"(now {config.spec.learning_rate}) or check the data", param="finetune.learning_rate")
        loss.backward()
        out.loss += value
        out.tokens += int(batch["attention_mask"].sum())
    out.cached = forward.hits - hits_before == len(chosen)
    out.teacher_cached = distiller is not None and distiller.hits - teacher_hits_before == len(chosen)
    return out


def optimizer_step(state: TrainingState, max_grad_norm: float | None, device: torch.device) -> float:
    """Clip, step the optimizer and the scheduler, clear the gradients; the lr the step ran at."""
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(state.params, max_grad_norm)
    lr = state.lr
    state.optimizer.step()
    state.scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # so that the step's time is the step's
    state.step += 1
    return lr


def log_step(state: TrainingState, result: StepLoss, lr: float, schedule: Schedule, seconds: float, eta_s: float,
             distilling: bool, hooks: Hooks) -> dict[str, Any]:
    """The step's history entry (appended to ``state.history``), metrics and progress."""
    done, total = state.step, schedule.total_steps
    entry = {"step": done, "total_steps": total, "epoch": done / schedule.steps_per_epoch, "loss": result.loss,
             "lr": lr, "tokens_per_s": result.tokens / seconds if seconds > 0 else 0.0, "eta_s": eta_s,
             "tokens": result.tokens, "time_s": seconds, "cached": result.cached}
    if distilling:
        entry.update(result.parts)  # the unweighted terms: CE per target token, KL and 1 - cos per position
        entry["teacher_cached"] = result.teacher_cached
    state.history.append(entry)
    hooks.metrics({k: entry[k] for k in ("step", "total_steps", "epoch", "loss", "lr", "tokens_per_s", "eta_s")})
    hooks.progress(done, total, f"step {done}/{total} loss {result.loss:.4f}")
    return entry


def validate(state: TrainingState, plan: PartialPlan | None, examples: list[Example], config: TrainConfig,
             hooks: Hooks) -> float | None:
    """The validation loss now (recorded in ``state.val_history`` and the last history entry)."""
    val_loss = evaluate_loss(state.model, examples, config.spec.micro_batch_size, config.pad_id, config.device,
                             hooks, config.autocast_dtype)
    set_train_mode(state.model, plan)
    state.val_history.append(val_loss)
    if val_loss is not None:
        state.history[-1]["val_loss"] = val_loss
    return val_loss


def _add_time(timings: dict[str, float], key: str, since: float) -> None:
    timings[key] = timings.get(key, 0.0) + time.perf_counter() - since


def train(model: nn.Module, plan: PartialPlan | None, train_examples: list[Example], val_examples: list[Example],
          config: TrainConfig, hooks: Hooks, teacher: Teacher | None = None) -> TrainOutcome:
    """Train ``model`` in place; resumes from the latest checkpoint in ``config.work_dir`` that matches.

    With ``spec.objective == "distill"`` the ``teacher`` is required; see :mod:`.distill`.
    """
    spec = config.spec
    timings: dict[str, float] = {}
    schedule = Schedule.of(len(train_examples), spec)
    state = TrainingState.create(model, spec, lambda s: lr_factor(s, spec.warmup_steps, schedule.total_steps),
                                 config.fingerprint, config.paged_8bit)
    cache, distiller = open_caches(model, plan, train_examples, schedule, config, hooks, teacher)
    forward = Forward(model, plan, cache, hooks, config.autocast_dtype, config.device)

    # Seed, then let a checkpoint overwrite the RNG states: a resumed run continues the same stream.
    torch.manual_seed(spec.seed)
    state.resume_latest(config.work_dir, hooks)

    set_train_mode(model, plan)
    state.optimizer.zero_grad(set_to_none=True)
    start_step = state.step
    run_start = time.perf_counter()
    run_tokens = 0
    val_loss: float | None = state.val_history[-1] if state.val_history else None
    for step in range(start_step, schedule.total_steps):
        t0 = time.perf_counter()
        result = accumulate_gradients(step, schedule, train_examples, forward, distiller, config, hooks)
        lr = optimizer_step(state, spec.max_grad_norm, config.device)
        seconds = time.perf_counter() - t0
        run_tokens += result.tokens
        eta = (time.perf_counter() - run_start) / (state.step - start_step) * (schedule.total_steps - state.step)
        log_step(state, result, lr, schedule, seconds, eta, distiller is not None, hooks)
        if schedule.ends_epoch(state.step):
            t_val = time.perf_counter()
            val_loss = validate(state, plan, val_examples, config, hooks)
            _add_time(timings, "validate", t_val)
        if state.step % spec.checkpoint_every == 0 and state.step < schedule.total_steps:
            t_ck = time.perf_counter()
            epoch, pos = schedule.position(step)
            state.save(config.work_dir, epoch=epoch, micro_batch_position=(pos + 1) * schedule.accumulation)
            _add_time(timings, "checkpoint", t_ck)
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
    total = schedule.total_steps
    return TrainOutcome(
        steps=total, total_steps=total, epochs=total / schedule.steps_per_epoch,
        final_loss=float(state.history[-1]["loss"]) if state.history else float("nan"), val_loss=val_loss,
        tokens_per_s=run_tokens / train_time if train_time > 0 else 0.0, history=state.history,
        resumed_from_step=state.resumed_from, timings=timings,
    )
