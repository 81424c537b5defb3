"""One migration policy (db.migrate.ensure_schema) for every entry point: auto-migrate by default;
with LAYERPRUNE_AUTO_MIGRATE=0 nothing migrates by itself and a database behind this code's schema
stops a one-shot command with a clear message and keeps the API and the worker waiting, not ready,
until ``layerprune migrate`` has run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, inspect

from layerprune.db.migrate import SchemaBehindError, current_revision, ensure_schema, head_revision
from layerprune.processes import stop_group
from layerprune.settings import Settings
from tests.service_fixtures import TEST_KEY_SECRET

REPO = Path(__file__).resolve().parents[2]
KEY = "lp_policy_key"


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAYERPRUNE_")}
    env.update(LAYERPRUNE_DATA_DIR=str(data_dir), LAYERPRUNE_API_KEYS=f"solo:{KEY}", LAYERPRUNE_LOG_JSON="false",
               LAYERPRUNE_KEY_SECRET=TEST_KEY_SECRET, LAYERPRUNE_DISPATCH_INTERVAL_SECONDS="0.5",
               OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), **extra)
    return env


def _cli(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "layerprune.cli", *argv], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "layerprune.cli", *argv], env=env, cwd=REPO,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)  # noqa: SIM115


def _wait_for(predicate, what: str, log: Path, timeout: float = 90.0):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}:\n{log.read_text(errors='replace')[-3000:]}")


def test_ensure_schema_migrates_by_default_and_refuses_with_auto_migrate_off(tmp_path):
    url = f"sqlite:///{tmp_path / 'sub' / 'p.db'}"  # the folder does not exist yet
    off = Settings(database_url=url, auto_migrate=False)
    with pytest.raises(SchemaBehindError) as info:
        ensure_schema(off)
    message = str(info.value)
    assert "empty" in message and head_revision() in message
    assert "LAYERPRUNE_AUTO_MIGRATE=0" in message and "layerprune migrate" in message
    assert _tables(url) == set()  # nothing was migrated

    ensure_schema(Settings(database_url=url, auto_migrate=True))
    assert current_revision(url) == head_revision() and "jobs" in _tables(url)
    ensure_schema(off)  # at head: nothing to refuse


def test_keys_create_with_auto_migrate_off_is_one_line_and_migrates_nothing(tmp_path):
    env = _env(tmp_path / "data", LAYERPRUNE_AUTO_MIGRATE="0")
    proc = _cli("keys", "create", "acme", env=env)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("error: the database is empty") and "layerprune migrate" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _tables(f"sqlite:///{tmp_path / 'data' / 'layerprune.db'}") == set()

    proc = _cli("keys", "create", "acme", env=_env(tmp_path / "data"))  # the default migrates
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith("lp_")


@pytest.mark.parametrize("how", ["env", "flag"])
def test_serve_with_auto_migrate_off_is_not_ready_until_migrated(tmp_path, how):
    data = tmp_path / "data"
    url = f"sqlite:///{data / 'layerprune.db'}"
    env = _env(data, LAYERPRUNE_AUTO_MIGRATE="0") if how == "env" else _env(data)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = ["serve", "--host", "127.0.0.1", "--port", str(port)] + (["--no-migrate"] if how == "flag" else [])
    log = tmp_path / "api.log"
    api = _start(argv, env, log)
    base = f"http://127.0.0.1:{port}"

    def ready() -> httpx.Response | None:
        assert api.poll() is None, log.read_text(errors="replace")
        try:
            return httpx.get(f"{base}/readyz", timeout=5)
        except httpx.TransportError:
            return None

    try:
        r = _wait_for(ready, "the API to answer", log)
        assert r.status_code == 503 and r.json()["checks"]["migrations"].startswith("behind")
        assert _tables(url) == set()
        _wait_for(lambda: "layerprune migrate" in log.read_text(errors="replace"), "the log to say what to run", log)

        assert _cli("migrate", env=env).returncode == 0
        _wait_for(lambda: (r := ready()) is not None and r.status_code == 200, "ready after migrating", log)
        # The rest of the start-up work ran too: the bootstrap key works.
        _wait_for(lambda: httpx.get(f"{base}/v1/jobs", headers={"Authorization": f"Bearer {KEY}"},
                                        timeout=5).status_code == 200, "the bootstrap key", log)
    finally:
        stop_group(api)


def test_worker_with_auto_migrate_off_waits_and_migrates_nothing(tmp_path):
    data = tmp_path / "data"
    log = tmp_path / "worker.log"
    worker = subprocess.Popen([sys.executable, "-m", "layerprune.worker"], env=_env(data, LAYERPRUNE_AUTO_MIGRATE="0"),
                              cwd=REPO, stdout=open(log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
                              start_new_session=True)
    try:
        _wait_for(lambda: "LAYERPRUNE_AUTO_MIGRATE=0" in log.read_text(errors="replace"), "the worker's message", log)
        assert worker.poll() is None  # waiting, not crashed
        assert _tables(f"sqlite:///{data / 'layerprune.db'}") == set()
    finally:
        stop_group(worker)
