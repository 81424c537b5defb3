"""layerprune's scores equal lm-evaluation-harness's on the bundled model and data.

lm-evaluation-harness (pinned in the test extra) runs its own task yaml files (included by absolute
path, so its prompts, preprocessing and metrics are its own), with only the data source replaced:
each task reads a local JSON file holding the same raw documents layerprune reads
(core/evaluate/lm_eval_configs.py). Nothing touches the hub. Both score the same fp32 model on CPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from layerprune.core.evaluate.tasks import GROUPS, MMLU_SUBJECTS  # noqa: E402

# Small but real: every task, MMLU with the first document of each of its 57 subjects.
LIMITS: dict[str, int | None] = {"arc_easy": 8, "arc_challenge": 8, "piqa": 8, "hellaswag": 6, "openbookqa": 8,
                                 "winogrande": 8, "boolq": 4, "mmlu": 1}


@pytest.mark.slow
def test_identical_acc_and_acc_norm_to_lm_eval(bundled_dir: Path, tmp_path: Path, monkeypatch) -> None:
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from layerprune.core.evaluate.lm_eval_configs import write_lm_eval_configs
    from layerprune.core.evaluate.multiple_choice import run_tasks

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets_cache"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lm_names = write_lm_eval_configs(tmp_path / "tasks", LIMITS)

    tokenizer = AutoTokenizer.from_pretrained(bundled_dir)
    model = AutoModelForCausalLM.from_pretrained(bundled_dir, dtype=torch.float32).eval()

    ours: dict[str, dict] = {}
    for name, limit in LIMITS.items():
        ours.update(run_tasks(model, tokenizer, [name], limit=limit, batch_size=16))

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=16, device="cpu")
    tm = TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False)
    theirs = simple_evaluate(model=lm, tasks=list(lm_names.values()), task_manager=tm, num_fewshot=0,
                             log_samples=False)["results"]

    for name, limit in LIMITS.items():
        key = lm_names[name]
        assert limit is not None
        assert ours[name]["n"] == limit * len(GROUPS.get(name, (name,)))
        for metric in ("acc", "acc_norm"):
            assert ours[name][metric] == pytest.approx(theirs[key][f"{metric},none"], abs=1e-12), (name, metric)
            stderr = theirs[key][f"{metric}_stderr,none"]
            if stderr == "N/A":  # lm-eval's answer where a subject has a single document
                assert ours[name][f"{metric}_stderr"] is None
            else:
                assert ours[name][f"{metric}_stderr"] == pytest.approx(stderr, abs=1e-12), (name, metric)
    for subject in MMLU_SUBJECTS:
        for metric in ("acc", "acc_norm"):
            assert ours["mmlu"]["subtasks"][subject][metric] == theirs[f"lp_mmlu_{subject}"][f"{metric},none"]
    # A model at chance level everywhere would make this test weak; ARC-Easy is well above it.
    assert ours["arc_easy"]["acc"] >= 0.4
