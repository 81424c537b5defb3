"""TrainingState: what a checkpoint saves is what a restore brings back (weights, optimizer,
scheduler, step, histories and the RNG stream), and another run's checkpoint is set aside."""

from __future__ import annotations

import torch
from torch import nn

from layerprune.core.finetune.checkpoint import checkpoints_dir, latest_checkpoint
from layerprune.core.finetune.loop import lr_factor
from layerprune.core.finetune.state import TrainingState
from layerprune.core.hooks import Hooks
from layerprune.core.spec import FinetuneSpec

SPEC = FinetuneSpec(learning_rate=1e-2, warmup_steps=2)


def _state(fingerprint: str = "run-a") -> TrainingState:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    return TrainingState.create(model, SPEC, lambda s: lr_factor(s, SPEC.warmup_steps, 10), fingerprint)


def _one_step(state: TrainingState) -> None:
    x = torch.randn(3, 4)
    state.model(x).pow(2).sum().backward()
    state.optimizer.step()
    state.scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    state.history.append({"step": state.step})


def test_save_then_restore_continues_the_same_run(tmp_path):
    a = _state()
    for _ in range(3):
        _one_step(a)
    a.val_history.append(1.5)
    a.save(tmp_path, epoch=0, micro_batch_position=3)
    after_save = torch.rand(5)  # the RNG stream right after the checkpoint

    b = _state()
    assert b.restore(latest_checkpoint(tmp_path))
    assert torch.equal(torch.rand(5), after_save)  # the RNG restored
    assert b.step == b.resumed_from == 3 and b.history == a.history and b.val_history == [1.5]
    assert b.lr == a.lr and b.scheduler.last_epoch == a.scheduler.last_epoch
    for (na, pa), (nb, pb) in zip(a.named, b.named, strict=True):
        assert na == nb and torch.equal(pa, pb)
    torch.manual_seed(1)
    _one_step(a)
    torch.manual_seed(1)
    _one_step(b)
    for (_, pa), (_, pb) in zip(a.named, b.named, strict=True):
        assert torch.equal(pa, pb)  # the optimizer's moments came back too


def test_another_runs_checkpoint_is_not_restored_and_is_moved_aside(tmp_path):
    a = _state("run-a")
    _one_step(a)
    a.save(tmp_path, epoch=0, micro_batch_position=1)
    b = _state("run-b")
    before = [p.detach().clone() for _, p in b.named]
    warnings: list[str] = []
    b.resume_latest(tmp_path, Hooks(log=lambda level, msg, fields: warnings.append(msg) if level == "warning" else None))
    assert b.step == 0 and b.resumed_from is None and b.history == []
    assert all(torch.equal(p, q) for (_, p), q in zip(b.named, before, strict=True))
    assert not checkpoints_dir(tmp_path).exists() and list(tmp_path.glob("checkpoints.stale-*"))
    assert warnings and "other settings" in warnings[0]
