"""bench/quality.py at a toy size, so the quality table's code path never rots.

A real subprocess on the bundled model: one recipe (angular + least-squares map + distillation),
a few documents, two healing steps. The figures are not asserted (that is the bench's job); what
is checked is that every column is there, the map's fit is recorded, a resumed run reuses the
rows it already has, and unhealed rows survive a change of the healing budget.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOY = ["--limit", "4", "--ppl-windows", "2", "--ppl-seq-len", "64", "--calibration-samples", "4",
       "--heal-steps", "2", "--heal-batch", "2", "--heal-seq-len", "64"]


def _bench(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "quality.py"), *argv], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _module():
    spec = importlib.util.spec_from_file_location("bench_quality", ROOT / "bench" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_toy_run_prints_the_table_and_resumes_from_its_rows(tmp_path: Path) -> None:
    rows, out = tmp_path / "rows.jsonl", tmp_path / "out.json"
    argv = [*TOY, "--recipes", "angular-lstsq-distill", "--rows", str(rows), "--out", str(out), "--markdown"]
    proc = _bench(tmp_path, *argv)
    report = json.loads(out.read_text())
    (row,) = report["rows"]
    assert row["recipe"] == "angular-lstsq-distill" and row["num_layers"] == 23
    assert row["params"] < report["dense"]["params"] and report["dense"]["num_layers"] == 30
    assert row["heal_cpu_s"] > 0 and row["prune_cpu_s"] > 0 and row["spec"]["finetune"]["objective"] == "distill"
    (run,) = row["replace_fit"]["runs"]
    assert run["layers"] == row["removed_layers"] and run["cosine"] > run["cosine_removed"]
    for r in (report["dense"], row):
        assert r["perplexity"] > 1 and set(r["acc"]) == {"arc_easy", "piqa", "hellaswag"}
        assert r["mean_acc"] == pytest.approx(sum(r["acc"].values()) / 3)
    assert report["goals"]["best"] == "angular-lstsq-distill"
    assert "healing budget: 2 steps x 2 sequences x 64 tokens" in proc.stdout
    assert "| dense (no pruning) |" in proc.stdout and "(`angular-lstsq-distill`)" in proc.stdout
    assert len(rows.read_text().splitlines()) == 2  # dense, then the recipe, each as it landed

    again = _bench(tmp_path, *argv)  # everything is in the rows file: nothing runs again
    assert len(rows.read_text().splitlines()) == 2
    assert json.loads(out.read_text())["rows"] == report["rows"]
    assert "best: angular-lstsq-distill" in again.stdout


def test_unhealed_rows_are_reused_whatever_the_healing_budget(tmp_path: Path) -> None:
    quality = _module()
    args = quality.argparse.Namespace(limit=4, ppl_windows=2, ppl_seq_len=64, calibration_samples=4, heal_steps=2,
                                      heal_batch=2, heal_seq_len=64, learning_rate=2e-4, rows=tmp_path / "rows")
    old = {**vars(args), "heal_steps": 60}
    lines = [{"recipe": name, "settings": {k: old[k] for k in quality.EVAL_SETTINGS + quality.HEAL_SETTINGS}}
             for name in (quality.DENSE, "angular-lstsq", "angular-lstsq-distill")]
    lines.append({"recipe": "angular", "settings": {**lines[0]["settings"], "limit": 500}})  # other evaluation
    args.rows.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert sorted(quality.load_rows(args)) == sorted([quality.DENSE, "angular-lstsq"])
    args.heal_steps = 60
    assert sorted(quality.load_rows(args)) == sorted([quality.DENSE, "angular-lstsq", "angular-lstsq-distill"])
