"""A private API server for tests that need real sockets: ``layerprune serve`` in a subprocess.

It runs exactly as the CLI starts it (uvicorn with ``api/server.py``'s options, migrations first)
on a free loopback port, with its own data folder, so tests can hold hundreds of connections,
send raw bytes or leave requests unfinished without touching other tests' servers.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerprune.processes import stop_group
from tests.service_fixtures import TEST_KEY_SECRET

REPO = Path(__file__).resolve().parents[2]
SPEC = {"model": "bundled:smollm2-135m-instruct", "prune": {"metric": "reverse_order", "ratio": 0.25}}


@dataclass
class LiveServer:
    port: int
    key: str
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def create_job(self) -> dict[str, Any]:
        import httpx

        r = httpx.post(f"{self.url}/v1/jobs", json=SPEC, headers=self.headers, timeout=60)
        assert r.status_code == 201, r.text
        return r.json()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(data_dir: Path, database_url: str | None = None, **settings: str) -> Iterator[LiveServer]:
    """``layerprune serve`` on a free port; ``settings`` are LAYERPRUNE_<NAME> overrides."""
    key = "lp_test_" + secrets.token_hex(12)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAYERPRUNE_")}
    env.update({"LAYERPRUNE_DATA_DIR": str(data_dir), "LAYERPRUNE_API_KEYS": f"live:{key}",
                "LAYERPRUNE_CUDA_WORKERS": "false", "LAYERPRUNE_LOG_LEVEL": "WARNING",
                "LAYERPRUNE_KEY_SECRET": TEST_KEY_SECRET,
                "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    if database_url:
        env["LAYERPRUNE_DATABASE_URL"] = database_url
    env.update({"LAYERPRUNE_" + name.upper(): str(value) for name, value in settings.items()})
    data_dir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    log = data_dir / f"api-{port}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "layerprune.cli", "serve", "--port", str(port)],
                                env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, f"the server exited: {log.read_text()[-3000:]}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"the server did not start: {log.read_text()[-3000:]}"
                time.sleep(0.2)
        yield LiveServer(port, key, log)
    finally:
        stop_group(proc, grace=15)
