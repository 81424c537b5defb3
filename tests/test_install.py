"""A regular (non-editable) install works on its own: ``pip install .`` into a fresh virtualenv,
then, from outside the source tree, ``layerprune migrate``, ``layerprune serve`` and ``layerprune
worker`` run a job. The migrations travel inside the package; nothing reads the source tree.

The fresh venv reaches the test environment's third-party packages (torch, transformers, …)
through a ``.pth`` line instead of installing them again; layerprune itself comes only from the
install (the copy it was built from is deleted before anything runs), and the test checks that.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import httpx
import pytest

from layerprune.db.migrate import head_revision
from layerprune.processes import stop_group
from tests.tiny import save_tiny

REPO = Path(__file__).resolve().parents[1]
KEY = "lp_install_key"
WHERE = ("import json, sys, layerprune, layerprune.db.migrate as m; "
         "print(json.dumps({'file': layerprune.__file__, 'migrations': str(m.MIGRATIONS), 'path': sys.path}))")


def _inside(path: str | Path, root: Path) -> bool:
    return Path(path).resolve().is_relative_to(root.resolve())


def _install(tmp: Path) -> Path:
    """A venv at ``tmp/venv`` holding layerprune from a regular install of a copy of this tree."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # Only the directories themselves: their .pth files (the editable install of the source tree
    # among them) are not processed for a path added this way.
    shared = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (Path(site) / "_test_shared_deps.pth").write_text("\n".join(shared) + "\n")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "layerprune", src / "layerprune", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    proc = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                           "--disable-pip-version-check", "--quiet", str(src)],
                          cwd=tmp, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    shutil.rmtree(src)
    return venv


def _env(data: Path, models: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAYERPRUNE_") and k != "PYTHONPATH"}
    env.update(LAYERPRUNE_DATA_DIR=str(data), LAYERPRUNE_API_KEYS=f"solo:{KEY}", LAYERPRUNE_MODEL_ROOTS=str(models),
               LAYERPRUNE_LOG_JSON="false", LAYERPRUNE_DISPATCH_INTERVAL_SECONDS="0.5", OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def _start(argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(argv, env=env, cwd=cwd, stdout=open(log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
                            start_new_session=True)


def test_a_regular_install_migrates_serves_and_runs_a_job(tmp_path):
    venv = _install(tmp_path)
    run = tmp_path / "run"  # the working directory of every command: not the source tree
    run.mkdir()
    models = tmp_path / "models"
    model = save_tiny(models / "tiny-llama", "llama")
    env = _env(tmp_path / "data", models)

    where = subprocess.run([str(venv / "bin" / "python"), "-c", WHERE], env=env, cwd=run, capture_output=True,
                           text=True, check=True).stdout
    found = json.loads(where)
    assert _inside(found["file"], venv) and _inside(found["migrations"], venv), found
    shared = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    # The test venv may itself live in the source tree (.venv): its site-packages are the shared
    # dependencies, not the source; no other path inside the tree may be importable.
    leaks = [p for p in found["path"] if p not in shared and _inside(p or run, REPO)]
    assert not leaks, f"source-tree paths on sys.path: {leaks}"

    layerprune = str(venv / "bin" / "layerprune")
    proc = subprocess.run([layerprune, "migrate"], env=env, cwd=run, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert f"database at revision {head_revision()}" in proc.stdout

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {KEY}"}
    api = _start([layerprune, "serve", "--host", "127.0.0.1", "--port", str(port)], env, run, tmp_path / "api.log")
    worker = _start([layerprune, "worker", "--queues", "cpu,gpu"], env, run, tmp_path / "worker.log")

    def logs() -> str:
        return "\n".join(f"--- {n} ---\n" + (tmp_path / n).read_text(errors="replace")[-3000:]
                         for n in ("api.log", "worker.log"))

    try:
        deadline = time.monotonic() + 120
        while True:
            assert api.poll() is None and worker.poll() is None, logs()
            try:
                if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the installed API did not become ready:\n{logs()}")
            time.sleep(0.3)
        spec = {"model": str(model), "prune": {"metric": "reverse_order", "num_layers": 2}}
        r = httpx.post(f"{base}/v1/jobs", json=spec, headers=headers, timeout=30)
        assert r.status_code in (200, 201, 202), r.text
        job_id = r.json()["id"]
        deadline = time.monotonic() + 300
        while True:
            job = httpx.get(f"{base}/v1/jobs/{job_id}", headers=headers, timeout=30).json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                break
            assert worker.poll() is None, logs()
            if time.monotonic() > deadline:
                pytest.fail(f"the job did not finish: {job}\n{logs()}")
            time.sleep(0.5)
        assert job["status"] == "succeeded", f"{job}\n{logs()}"
        assert len(job["result"]["removed_layers"]) == 2, job["result"]
    finally:
        stop_group(worker)
        stop_group(api)
