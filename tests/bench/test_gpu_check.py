"""bench/gpu_check.py --cpu-smoke: every code path of the GPU check, on the CPU, so it never rots.

A real subprocess, as it runs on a GPU machine: the tiny model, the bundled data, lm-eval. The
test checks what the JSON says, section by section (figures present, skips with their reasons);
speed figures are reported there, never asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_cpu_smoke_runs_every_section_and_writes_the_json(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--cpu-smoke", "--out", str(out),
                           "--work-dir", str(tmp_path)], env=env, capture_output=True, text=True, timeout=900)
    report = json.loads((out / "gpu_check.json").read_text())
    sections = report["sections"]
    assert proc.returncode == 0, (proc.stderr[-3000:], {k: v.get("error") for k, v in sections.items()})
    assert report["mode"] == "cpu-smoke" and report["ok"] is True and report["failed"] == []
    assert list(sections) == ["environment", "load_bf16", "ranking", "jobs", "llama8b_shaped", "evaluate_vs_lm_eval"]

    assert sections["load_bf16"]["status"] == "pass" and sections["load_bf16"]["wrong"] == []
    for metric in ("block_influence", "ppl"):
        r = sections["ranking"]["metrics"][metric]
        assert r["pass"] and len(r["chosen_fp32_cpu"]) == sections["ranking"]["k"] == 2
        assert -1.0 <= r["spearman"] <= 1.0 and r["max_abs_score_diff"] >= 0.0

    runs = sections["jobs"]["runs"]
    for name in ("partial_cached", "lora"):
        assert runs[name]["status"] == "pass", runs[name]
        assert runs[name]["removed_layers"] == [6, 7] and runs[name]["tokens_per_s"] > 0
        assert runs[name]["peak_memory_mib"] > 0 and set(runs[name]["tasks"]) == {"arc_easy"}
    assert runs["qlora"]["status"] == "skipped" and "CUDA" in runs["qlora"]["reason"]
    assert sections["jobs"]["cached_partial_vs_lora_tokens_per_s"] > 0

    big = sections["llama8b_shaped"]
    assert big["status"] == "skipped" and "CUDA" in big["reason"]
    for name in ("cached", "uncached"):
        run = big["smoke"]["runs"][name]
        assert run["tokens_per_s_after_epoch_1"] > 0 and run["mfu"] is None  # no peak known for a CPU
    assert big["smoke"]["runs"]["cached"]["cached_steps"] > 0 and big["smoke"]["runs"]["uncached"]["cached_steps"] == 0

    ev = sections["evaluate_vs_lm_eval"]
    assert ev["status"] == "pass" and ev["identical"] is True and ev["dtype"] == "torch.float32"
    assert ev["examples_per_s_ratio"] > 0


def test_the_gpu_check_refuses_to_run_without_cuda_and_says_why(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--out", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["ok"] is False and "no CUDA device" in report["sections"]["environment"]["error"]
