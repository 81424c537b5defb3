"""A live layerprune for the client and CLI tests: ``layerprune serve`` and ``layerprune worker``
as real subprocesses on the embedded default (SQLite + filesystem queue) in a temporary data dir,
with two tenants and a tiny Llama under the model roots. Started once per test session."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from layerprune.processes import stop_group
from tests.tiny import save_tiny

REPO = Path(__file__).resolve().parents[2]
KEY_A = "lp_test_key_a"
KEY_B = "lp_test_key_b"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A CLI subprocess in its own process group, logging to a file."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._fh = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "layerprune.cli", *argv],
            env=env,
            cwd=REPO,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        stop_group(self.proc)
        self._fh.close()

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


@dataclass
class Live:
    url: str
    data_dir: Path
    model_dir: Path
    env: dict[str, str]
    api: Proc
    worker: Proc | None = None

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.data_dir / 'layerprune.db'}"


def live_env(data_dir: Path, model_root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAYERPRUNE_")}
    env.update(
        LAYERPRUNE_DATA_DIR=str(data_dir),
        LAYERPRUNE_API_KEYS=f"tenant-a:{KEY_A},tenant-b:{KEY_B}",
        LAYERPRUNE_MODEL_ROOTS=str(model_root),
        LAYERPRUNE_LOG_JSON="false",
        LAYERPRUNE_DISPATCH_INTERVAL_SECONDS="0.5",
        LAYERPRUNE_PROGRESS_EVENT_INTERVAL_SECONDS="0.2",
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=str(REPO),
    )
    return env


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("live")
    model_root = root / "models"
    model_dir = save_tiny(model_root / "tiny-llama", "llama")
    data_dir = root / "data"
    env = live_env(data_dir, model_root)
    port = free_port()
    data_dir.mkdir()
    api = Proc(["serve", "--host", "127.0.0.1", "--port", str(port)], env, root / "api.log")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        if not api.alive():
            pytest.fail(f"layerprune serve exited:\n{api.tail()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            api.stop()
            pytest.fail(f"layerprune serve did not answer /healthz:\n{api.tail()}")
        time.sleep(0.2)
    state = Live(url=url, data_dir=data_dir, model_dir=model_dir, env=env, api=api)
    yield state
    if state.worker is not None:
        state.worker.stop()
    api.stop()


@pytest.fixture(scope="session")
def live_worker(live: Live) -> Live:
    """The same service with a worker running (started on first use, stopped with the server).

    It consumes only the ``cpu`` queue, so jobs that need healing (routed to ``gpu``) stay queued
    however the tests are ordered: :func:`queued_spec` makes those, for the cancel tests.
    """
    if live.worker is None:
        live.worker = Proc(["worker", "--queues", "cpu"], live.env, live.data_dir.parent / "worker.log")
    return live


def prune_spec(live: Live, **extra: object) -> dict[str, object]:
    """A copy-only job on the tiny model: seconds of work."""
    return {"model": str(live.model_dir), "prune": {"metric": "reverse_order", "num_layers": 2}, **extra}


def queued_spec(live: Live, **extra: object) -> dict[str, object]:
    """A job for the ``gpu`` queue, which no test worker consumes: it stays queued until cancelled."""
    return {**prune_spec(live), "finetune": {"method": "partial", "max_steps": 1, "batch_size": 4}, **extra}
