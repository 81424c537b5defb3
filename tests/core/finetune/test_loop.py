"""Checkpoints, kill-and-resume, hooks, cancellation and divergence on tiny models.

Resume tolerance: the resumed run's per-step losses and final loss equal the uninterrupted run's
within 1e-6 relative, and its weights within 1e-6 (fp32 on CPU; in practice bit-equal).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from layerprune.core.errors import Cancelled, TrainingDivergedError
from layerprune.core.finetune import finetune_model
from layerprune.core.finetune.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint
from layerprune.core.hooks import Hooks
from layerprune.core.spec import FinetuneSpec

REL = 1e-6


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> str:
    from layerprune.core.bundled import bundled_text

    path = tmp_path_factory.mktemp("resumedata") / "train.txt"
    path.write_text("\n\n".join(t[:300] for t in bundled_text("wikipedia-train")[30:54]))
    return str(path)


def spec_for(method: str, data: str) -> FinetuneSpec:
    # 19 training texts, micro-batch 4 → 5 micro-batches, batch 8 → 3 steps an epoch, 9 in all.
    return FinetuneSpec(method=method, dataset=data, format="text", batch_size=8, micro_batch_size=4, epochs=3,
                        warmup_steps=2, learning_rate=3e-3, max_seq_len=48, validation_fraction=0.2,
                        checkpoint_every=2, trainable_last_layers=2, lora_dropout=0.1)


KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from layerprune.core.finetune import finetune_model
    from layerprune.core.hooks import Hooks
    from layerprune.core.spec import FinetuneSpec

    src, spec_json, out, work, kill_at = sys.argv[1:]

    def progress(done, total, msg):
        if done == int(kill_at):  # step 5 is done but not checkpointed: the last checkpoint is step 4
            os.kill(os.getpid(), signal.SIGKILL)

    finetune_model(Path(src), FinetuneSpec.model_validate_json(spec_json), Path(out), Path(work), Hooks(progress=progress))
""")


@pytest.mark.parametrize("method", ["partial", "lora"])
def test_killed_run_resumes_to_the_same_final_loss(tmp_path, tiny_dirs, text_file, method):
    src = tiny_dirs("llama")
    spec = spec_for(method, text_file)
    straight = finetune_model(src, spec, tmp_path / "out-a", tmp_path / "work-a")
    assert straight.steps == 9 and straight.resumed_from_step is None

    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(script), str(src), spec.model_dump_json(), str(tmp_path / "out-b"),
                           str(tmp_path / "work-b"), "5"], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert not (tmp_path / "out-b").exists()
    latest = latest_checkpoint(tmp_path / "work-b")
    assert latest is not None and latest.name == "step_4"

    resumed = finetune_model(src, spec, tmp_path / "out-b", tmp_path / "work-b")
    assert resumed.resumed_from_step == 4
    assert [h["step"] for h in resumed.history] == list(range(1, 10))
    assert resumed.final_loss == pytest.approx(straight.final_loss, rel=REL)
    for ha, hb in zip(straight.history, resumed.history, strict=True):
        assert hb["loss"] == pytest.approx(ha["loss"], rel=REL)
    assert resumed.val_loss == pytest.approx(straight.val_loss, rel=REL)
    wa = load_file(str(tmp_path / "out-a" / "model.safetensors"))
    wb = load_file(str(tmp_path / "out-b" / "model.safetensors"))
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=0, atol=1e-6), k


def test_checkpoints_are_atomic_and_only_the_last_few_are_kept(tmp_path):
    for step in (2, 4, 6, 8):
        save_checkpoint(tmp_path, step, {"w": torch.full((2,), float(step))}, {"step": step}, keep=3)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_4", "step_6", "step_8"]
    # A process killed mid-write leaves only a hidden temporary folder, which is never read.
    half = tmp_path / "checkpoints" / ".step_10-abc"
    half.mkdir()
    save_file({"w": torch.zeros(2)}, str(half / "trainable.safetensors"))
    assert latest_checkpoint(tmp_path).name == "step_8"
    # A step folder without its state file is incomplete too.
    (tmp_path / "checkpoints" / "step_12").mkdir()
    assert latest_checkpoint(tmp_path).name == "step_8"


def test_checkpoint_holds_weights_optimizer_scheduler_rng_and_position(tmp_path, tiny_dirs, text_file):
    spec = spec_for("partial", text_file).model_copy(update={"max_steps": 3})
    finetune_model(tiny_dirs("llama"), spec, tmp_path / "out", tmp_path / "work")
    path = latest_checkpoint(tmp_path / "work")
    assert path is not None and path.name == "step_2"
    state = torch.load(path / "state.pt", weights_only=True)
    assert {"step", "optimizer", "scheduler", "rng", "history", "fingerprint", "epoch",
            "micro_batch_position"} <= set(state)
    assert {"python", "numpy", "torch"} <= set(state["rng"])
    assert state["step"] == 2 and state["micro_batch_position"] == 4
    weights = load_file(str(path / "trainable.safetensors"))
    assert set(weights) == {"lm_head.weight", "model.norm.weight"} | {
        k for k in weights if k.startswith(("model.layers.6.", "model.layers.7."))}
    assert any(k.startswith("model.layers.7.") for k in weights)


def test_checkpoints_of_other_settings_are_set_aside(tmp_path, tiny_dirs, text_file):
    spec = spec_for("partial", text_file).model_copy(update={"max_steps": 3})
    finetune_model(tiny_dirs("llama"), spec, tmp_path / "out", tmp_path / "work")
    warnings: list[str] = []
    other = spec.model_copy(update={"learning_rate": 1e-3})
    res = finetune_model(tiny_dirs("llama"), other, tmp_path / "out2", tmp_path / "work",
                         Hooks(log=lambda level, msg, data: warnings.append(msg) if level == "warning" else None))
    assert res.resumed_from_step is None and any("afresh" in w for w in warnings)
    assert any(p.name.startswith("checkpoints.stale-") for p in (tmp_path / "work").iterdir())


def test_hooks_get_metrics_and_progress_after_every_step(tmp_path, tiny_dirs, text_file):
    metrics: list[dict] = []
    progress: list[tuple] = []
    spec = spec_for("partial", text_file)
    res = finetune_model(tiny_dirs("llama"), spec, tmp_path / "out", tmp_path / "work",
                         Hooks(metrics=lambda m: metrics.append(dict(m)), progress=lambda d, t, m: progress.append((d, t))))
    assert [m["step"] for m in metrics] == list(range(1, 10)) and progress[-1] == (9, 9)
    assert set(metrics[0]) == {"step", "total_steps", "epoch", "loss", "lr", "tokens_per_s", "eta_s"}
    assert metrics[-1]["eta_s"] == 0 and metrics[-1]["epoch"] == pytest.approx(3.0)
    assert metrics[0]["lr"] == pytest.approx(1.5e-3)  # warm-up 1/2 of 3e-3
    assert res.to_dict()["history"][0]["loss"] == metrics[0]["loss"]
    json.dumps(res.to_dict())


def test_cancel_is_checked_between_micro_steps(tmp_path, tiny_dirs, text_file):
    calls = {"n": 0}

    def should_stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(Cancelled):
        finetune_model(tiny_dirs("llama"), spec_for("partial", text_file), tmp_path / "out", tmp_path / "work",
                       Hooks(should_stop=should_stop))
    assert calls["n"] == 4 and not (tmp_path / "out").exists()


def test_nan_loss_stops_with_training_diverged(tmp_path, tiny_dirs, text_file):
    src = tiny_dirs("llama")
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in Path(src).iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    weights = load_file(str(bad / "model.safetensors"))
    weights["model.layers.0.mlp.down_proj.weight"][0, 0] = float("nan")
    save_file(weights, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(TrainingDivergedError) as e:
        finetune_model(bad, spec_for("partial", text_file), tmp_path / "out", tmp_path / "work")
    assert "nan" in e.value.message and "step 1" in e.value.message and e.value.code == "training_diverged"
