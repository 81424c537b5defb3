"""The training loop's first losses, pinned to values recorded from the loop before its split into
steps (issue 15): a refactor of core.finetune.loop must not move a single step.

Each case is a tiny run (tiny Llama, 24 bundled Wikipedia texts, 4 optimizer steps, a checkpoint
at step 2, validation at the end) covering the paths the loop takes: the frozen-trunk cache
(partial), LoRA with dropout (the RNG stream), full fine-tuning with clipping and accumulation,
and distillation with the hidden-state term.

Tolerance: 1e-5 relative. On the machine where the values were recorded the refactored loop
reproduces them bit for bit (fp32 on CPU); the margin is for other CPUs' summation order only,
far below the change one misplaced step, scheduler tick or RNG draw makes (≥ 1e-3).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from layerprune.core.bundled import bundled_text
from layerprune.core.finetune import finetune_model
from layerprune.core.removal import remove_layers
from layerprune.core.spec import FinetuneSpec
from tests.tiny import save_tiny, tiny_model, tiny_tokenizer

REL = 1e-5

CASES: dict[str, dict] = {
    "partial-cached": dict(method="partial", trainable_last_layers=2, cache_trunk=True),
    "lora-dropout": dict(method="lora", lora_dropout=0.1, lora_r=4),
    "full-clipped": dict(method="full", max_grad_norm=0.5, weight_decay=0.01),
    "distill-partial": dict(method="partial", trainable_last_layers=2, objective="distill", distill_top_k=16,
                            distill_alpha=0.7, distill_temperature=2.0, distill_hidden_weight=0.5),
}

# Recorded from the loop as it stood at main 2de984a (one 129-line train()), with record() below.
PINNED: dict[str, dict[str, list[float]]] = {
    'distill-partial': {'loss': [11.342210292816162, 11.301490783691406, 11.125458240509033, 10.98079776763916],
                        'lr': [0.0015, 0.003, 0.003, 0.0015],
                        'val_loss': [6.2171337371176865]},
    'full-clipped': {'loss': [6.258713960647583, 6.2230753898620605, 6.101253271102905, 6.058434009552002],
                        'lr': [0.0015, 0.003, 0.003, 0.0015],
                        'val_loss': [6.020542225939162]},
    'lora-dropout': {'loss': [6.258713960647583, 6.25008225440979, 6.2355992794036865, 6.23703670501709],
                        'lr': [0.0015, 0.003, 0.003, 0.0015],
                        'val_loss': [6.219315679022606]},
    'partial-cached': {'loss': [6.258713960647583, 6.217361688613892, 6.161296606063843, 6.108469247817993],
                        'lr': [0.0015, 0.003, 0.003, 0.0015],
                        'val_loss': [6.095327174409907]},
}


def write_text(path: Path) -> str:
    path.write_text("\n\n".join(t[:300] for t in bundled_text("wikipedia-train")[:24]))
    return str(path)


def record(case: str, root: Path) -> dict[str, list[float]]:
    """Run ``case`` from scratch under ``root``; its per-step losses, learning rates and val loss."""
    root.mkdir(parents=True, exist_ok=True)
    data = write_text(root / "train.txt")
    teacher = save_tiny(root / "teacher", "llama")
    student = root / "student"
    model = tiny_model("llama")
    remove_layers(model, [5, 6, 7])
    model.save_pretrained(student)
    tiny_tokenizer().save_pretrained(student)
    # 19 training texts, micro-batch 2, batch 4 → 2 micro-steps per optimizer step; 4 steps.
    spec = FinetuneSpec(dataset=data, format="text", batch_size=4, micro_batch_size=2, max_steps=4, epochs=2,
                        warmup_steps=2, learning_rate=3e-3, max_seq_len=48, validation_fraction=0.2,
                        checkpoint_every=2, seed=7, **CASES[case])
    out = finetune_model(student, spec, root / "out", root / "work", teacher_dir=teacher)
    return {"loss": [h["loss"] for h in out.history], "lr": [h["lr"] for h in out.history],
            "val_loss": [out.val_loss]}


@pytest.mark.parametrize("case", sorted(CASES))
def test_losses_equal_the_recorded_ones_step_for_step(tmp_path, case):
    got = record(case, tmp_path)
    want = PINNED[case]
    assert len(got["loss"]) == len(want["loss"]) == 4
    for key in ("loss", "lr", "val_loss"):
        for step, (g, w) in enumerate(zip(got[key], want[key], strict=True), start=1):
            assert g == pytest.approx(w, rel=REL), f"{case}: {key} at step {step}: {g!r} != {w!r}"


if __name__ == "__main__":  # python -m tests.core.finetune.test_pinned_losses DIR: print the values to pin
    for name in sorted(CASES):
        print(f"    {name!r}: {record(name, Path(sys.argv[1]) / name)!r},")
