"""layerprune's scores equal lm-evaluation-harness's on the bundled model and data.

lm-evaluation-harness (pinned in the test extra) runs its own task yaml files (included by absolute
path, so its prompts, preprocessing and metrics are its own), with only the data source replaced:
each task reads a local JSON file holding the same raw documents layerprune reads. Nothing touches
the hub. Both score the same fp32 model object on CPU.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from layerprune.core.evaluate.loaders import _raw_docs  # noqa: E402
from layerprune.core.evaluate.tasks import GROUPS, MMLU_SUBJECTS, TASKS  # noqa: E402

LIMITS = {"arc_easy": 10, "arc_challenge": 10, "piqa": 10, "hellaswag": 8, "openbookqa": 10, "winogrande": 10,
          "boolq": 6, "mmlu": 2}
# Built-in yaml of each task (lm_eval/tasks/...), and the split that yaml scores.
YAMLS = {"arc_easy": "arc/arc_easy.yaml", "arc_challenge": "arc/arc_challenge.yaml", "piqa": "piqa/piqa.yaml",
         "hellaswag": "hellaswag/hellaswag.yaml", "openbookqa": "openbookqa/openbookqa.yaml",
         "winogrande": "winogrande/default.yaml", "boolq": "super_glue/boolq/default.yaml"}
METRICS = "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"


def _task_yaml(root: Path, lm_tasks: Path, name: str, include: str, split: str, limit: int, source: str) -> None:
    data = root / f"{name}.json"
    with open(data, "w", encoding="utf-8") as fh:
        for row in _raw_docs(source, split)[:limit]:
            fh.write(json.dumps(row) + "\n")
    splits = {"test": "null", "validation": "null"}
    splits[split] = split
    (root / f"{name}.yaml").write_text(
        f"include: {lm_tasks / include}\n"
        f"task: lp_{name}\n"
        "tag: []\n"
        "dataset_path: json\n"
        "dataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    {split}: {data}\n"
        "training_split: null\n"
        "fewshot_split: null\n"
        f"validation_split: {splits['validation']}\n"
        f"test_split: {splits['test']}\n"
        + METRICS
    )


def _write_configs(root: Path) -> None:
    import lm_eval

    lm_tasks = Path(os.path.dirname(lm_eval.__file__)) / "tasks"
    for name, include in YAMLS.items():
        task = TASKS[name]
        _task_yaml(root, lm_tasks, name, include, task.split, LIMITS[name], task.source)
    for subject in MMLU_SUBJECTS:
        _task_yaml(root, lm_tasks, f"mmlu_{subject}", f"mmlu/default/mmlu_{subject}.yaml", "test", LIMITS["mmlu"],
                   f"mmlu/{subject}")
    (root / "lp_mmlu.yaml").write_text(
        "group: lp_mmlu\ntask:\n" + "".join(f"  - lp_mmlu_{s}\n" for s in MMLU_SUBJECTS)
        + "aggregate_metric_list:\n  - metric: acc\n    weight_by_size: true\n"
        "  - metric: acc_norm\n    weight_by_size: true\n"
    )


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_identical_acc_and_acc_norm_to_lm_eval(bundled_dir: Path, tmp_path: Path, monkeypatch) -> None:
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from layerprune.core.evaluate.multiple_choice import run_tasks

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets_cache"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = tmp_path / "tasks"
    cfg.mkdir()
    _write_configs(cfg)

    tokenizer = AutoTokenizer.from_pretrained(bundled_dir)
    model = AutoModelForCausalLM.from_pretrained(bundled_dir, dtype=torch.float32).eval()

    ours: dict[str, dict] = {}
    for name, limit in LIMITS.items():
        ours.update(run_tasks(model, tokenizer, [name], limit=limit, batch_size=16))

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=16, device="cpu")
    tm = TaskManager(include_path=str(cfg), include_defaults=False)
    theirs = simple_evaluate(
        model=lm, tasks=[f"lp_{n}" for n in YAMLS] + ["lp_mmlu"], task_manager=tm, num_fewshot=0,
        log_samples=False,
    )["results"]

    for name in LIMITS:
        key = f"lp_{name}"
        assert ours[name]["n"] == (LIMITS[name] * len(GROUPS[name]) if name in GROUPS else LIMITS[name])
        for metric in ("acc", "acc_norm"):
            assert ours[name][metric] == pytest.approx(theirs[key][f"{metric},none"], abs=1e-12), (name, metric)
            stderr = theirs[key][f"{metric}_stderr,none"]
            assert ours[name][f"{metric}_stderr"] == pytest.approx(stderr, abs=1e-12), (name, metric)
    for subject in MMLU_SUBJECTS:
        for metric in ("acc", "acc_norm"):
            assert ours["mmlu"]["subtasks"][subject][metric] == theirs[f"lp_mmlu_{subject}"][f"{metric},none"]
    # A model at chance level on MMLU would make this test weak; ARC and HellaSwag are well above it.
    assert ours["arc_easy"]["acc"] >= 0.4
