"""Task configurations that make lm-evaluation-harness score the bundled, offline documents.

For parity checks and benchmarks only (lm-eval is a test dependency, never needed at run time).
Each written yaml includes lm-eval's own task yaml by absolute path, so prompts, preprocessing
(``!function`` hooks) and metrics stay lm-eval's; only the data source is replaced by a local JSON
file of the same raw documents layerprune reads (``dataset_path: json``), so nothing touches the
hub. Every task lists both ``acc`` and ``acc_norm`` (lm-eval's WinoGrande, BoolQ and MMLU yaml
list only ``acc``). MMLU becomes a group ``lp_mmlu`` of the 57 subjects aggregated by size.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from layerprune.core.evaluate.loaders import _raw_docs
from layerprune.core.evaluate.tasks import MMLU_SUBJECTS, TASKS

# Built-in yaml of each task, relative to lm_eval/tasks.
LM_EVAL_YAMLS = {
    "arc_easy": "arc/arc_easy.yaml", "arc_challenge": "arc/arc_challenge.yaml", "piqa": "piqa/piqa.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml", "openbookqa": "openbookqa/openbookqa.yaml",
    "winogrande": "winogrande/default.yaml", "boolq": "super_glue/boolq/default.yaml",
}
PREFIX = "lp_"


def lm_eval_tasks_dir() -> Path:
    import lm_eval  # noqa: PLC0415 - test dependency

    return Path(os.path.dirname(lm_eval.__file__)) / "tasks"


def _task_yaml(root: Path, include: Path, name: str, split: str, limit: int | None, source: str) -> None:
    data = root / f"{name}.jsonl"
    rows = _raw_docs(source, split)
    with open(data, "w", encoding="utf-8") as fh:
        for row in rows[:limit] if limit is not None else rows:
            fh.write(json.dumps(row) + "\n")
    splits = {"test": "null", "validation": "null", split: split}
    (root / f"{name}.yaml").write_text(
        f"include: {include}\n"
        f"task: {PREFIX}{name}\n"
        "tag: []\n"
        "dataset_path: json\n"
        "dataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    {split}: {data}\n"
        "training_split: null\n"
        "fewshot_split: null\n"
        f"validation_split: {splits['validation']}\n"
        f"test_split: {splits['test']}\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n",
        encoding="utf-8",
    )


def write_lm_eval_configs(root: Path, limits: dict[str, int | None]) -> dict[str, str]:
    """Write configs for the named tasks (``{task: limit}``) under ``root``; return lm-eval's task names."""
    lm_tasks = lm_eval_tasks_dir()
    root.mkdir(parents=True, exist_ok=True)
    names: dict[str, str] = {}
    for name, limit in limits.items():
        if name == "mmlu":
            for subject in MMLU_SUBJECTS:
                _task_yaml(root, lm_tasks / f"mmlu/default/mmlu_{subject}.yaml", f"mmlu_{subject}", "test", limit,
                           f"mmlu/{subject}")
            (root / "mmlu_group.yaml").write_text(
                f"group: {PREFIX}mmlu\ntask:\n" + "".join(f"  - {PREFIX}mmlu_{s}\n" for s in MMLU_SUBJECTS)
                + "aggregate_metric_list:\n  - metric: acc\n    weight_by_size: true\n"
                "  - metric: acc_norm\n    weight_by_size: true\n",
                encoding="utf-8",
            )
        else:
            task = TASKS[name]
            _task_yaml(root, lm_tasks / LM_EVAL_YAMLS[name], name, task.split, limit, task.source)
        names[name] = f"{PREFIX}{name}"
    return names
