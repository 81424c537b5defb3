"""Real processes for the worker tests: private Postgres and Redis servers, worker subprocesses.

The machine's shared Postgres and Redis (localhost:5432/6379) must never be stopped, so the tests
that restart a server start their own on a free port: Postgres via initdb/pg_ctl as the
``postgres`` user (it refuses to run as root), Redis as a plain subprocess without persistence.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from layerprune.processes import stop_group
from tests.service_fixtures import TEST_KEY_SECRET

REPO = Path(__file__).resolve().parents[2]
SHARED_PG = os.environ.get("LAYERPRUNE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
SHARED_REDIS = os.environ.get("LAYERPRUNE_TEST_REDIS", "redis://127.0.0.1:6379")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for(cond, timeout: float, interval: float = 0.2, what: str = "condition"):  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


# --------------------------------------------------------------------------------------------
# Databases


def shared_pg_available() -> bool:
    return port_open(5432)


def shared_redis_available() -> bool:
    return port_open(6379)


def _admin(url: str, sql: str) -> None:
    import psycopg

    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)


def create_database(server_url: str = SHARED_PG) -> str:
    """Create a uniquely named database on ``server_url``'s server; returns its SQLAlchemy URL."""
    name = "lp_worker_" + uuid.uuid4().hex[:10]
    _admin(server_url, f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + "/" + name


def drop_database(url: str) -> None:
    server, name = url.rsplit("/", 1)
    try:
        _admin(server + "/postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except Exception:  # noqa: BLE001 - best effort at teardown
        pass


def _pg_bin(tool: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"))
    if not found:
        raise RuntimeError(f"{tool} not found under /usr/lib/postgresql")
    return found[-1]


def _as_postgres(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


class PrivatePostgres:
    """A throw-away Postgres cluster on a free port (stop/start keep the data)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="lp-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        subprocess.run(_as_postgres([_pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                                     "--no-sync"]), check=True, capture_output=True)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(_as_postgres([_pg_bin("pg_ctl"), "-D", str(self.data), "-o", opts, "-l",
                                     str(self.dir / "log"), "-w", "-t", "30", "start"]),
                       check=True, capture_output=True)

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(_as_postgres([_pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"]),
                       capture_output=True)

    def close(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivateRedis:
    """A redis-server subprocess on a free port, without persistence (a restart loses everything)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: port_open(self.port), 10, what="redis")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    close = stop


# --------------------------------------------------------------------------------------------
# Worker processes


def service_env(data_dir: Path, database_url: str, broker_url: str = "", **extra: str) -> dict[str, str]:
    """Environment of a test service process: short leases and sweeps so faults heal in seconds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAYERPRUNE_")}
    env.update({
        "LAYERPRUNE_DATA_DIR": str(data_dir),
        "LAYERPRUNE_DATABASE_URL": database_url,
        "LAYERPRUNE_BROKER_URL": broker_url,
        "LAYERPRUNE_LEASE_SECONDS": "6",
        "LAYERPRUNE_HEARTBEAT_SECONDS": "1",
        "LAYERPRUNE_REAPER_INTERVAL_SECONDS": "1",
        "LAYERPRUNE_DISPATCH_INTERVAL_SECONDS": "0.5",
        "LAYERPRUNE_REDISPATCH_AFTER_SECONDS": "4",
        "LAYERPRUNE_PROGRESS_EVENT_INTERVAL_SECONDS": "0.5",
        "LAYERPRUNE_LOG_LEVEL": "INFO",
        "LAYERPRUNE_AUTO_MIGRATE": "1",
        "LAYERPRUNE_KEY_SECRET": TEST_KEY_SECRET,  # a server database needs one (db/keys.py)
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(REPO),
    })
    env.update(extra)
    return env


class WorkerProcess:
    """``python -m layerprune.worker`` in its own process group (so a kill takes its children too)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "layerprune.worker"], env=self.env, cwd=REPO,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            self.proc.wait(30)

    def stop(self) -> None:
        """Warm shutdown (SIGTERM); SIGKILL of the group if it does not end in time."""
        if self.proc is None:
            return
        stop_group(self.proc, grace=5)
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
