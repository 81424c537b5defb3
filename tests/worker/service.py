"""A small test harness around real service processes: one database, one broker, N workers, an API.

The test process itself plays the API's part where the API is not under test: it commits jobs
with ``queue.transitions.create_job`` and sends them with ``queue.celery_app.send_job`` exactly as the API does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from tests.worker import procs

TERMINAL = ("succeeded", "failed", "cancelled")

FAST_FINETUNE = {"method": "partial", "max_steps": 2, "batch_size": 2, "micro_batch_size": 1,
                 "max_seq_len": 256, "warmup_steps": 0, "checkpoint_every": 1}


def slow_finetune(steps: int = 60) -> dict[str, Any]:
    """A heal long enough to be interrupted mid-way (tens of ms a step here), checkpointing often."""
    return {**FAST_FINETUNE, "max_steps": steps, "checkpoint_every": 5}


@dataclass
class Service:
    tmp: Path
    database_url: str
    broker_url: str
    model_root: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    workers: list[procs.WorkerProcess] = field(default_factory=list)
    api: subprocess.Popen | None = None
    api_port: int = 0

    # ---- environment -------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.tmp / "data"

    def env(self) -> dict[str, str]:
        return procs.service_env(self.data_dir, self.database_url, self.broker_url,
                                 LAYERPRUNE_MODEL_ROOTS=str(self.model_root), **self.extra_env)

    def apply_env(self) -> None:
        """Point this (test) process's settings and Celery app at the service."""
        from layerprune.queue import celery_app
        from layerprune.settings import reset_settings_cache

        for k in [k for k in os.environ if k.startswith("LAYERPRUNE_")]:
            del os.environ[k]
        for k, v in self.env().items():
            if k.startswith("LAYERPRUNE_"):
                os.environ[k] = v
        reset_settings_cache()
        celery_app.configure()

    @property
    def sessions(self):  # noqa: ANN201
        from layerprune.db.session import session_factory

        return session_factory(self.database_url)

    # ---- processes ---------------------------------------------------------------------
    def start_worker(self, **env: str) -> procs.WorkerProcess:
        n = len(self.workers)
        w = procs.WorkerProcess({**self.env(), **env}, self.tmp / f"worker{n}.log").start()
        self.workers.append(w)
        return w

    def start_api(self) -> str:
        self.api_port = procs.free_port()
        self._api_log = open(self.tmp / "api.log", "ab")
        env = {**self.env(), "LAYERPRUNE_API_KEYS": "tenant-a:key-a,tenant-b:key-b"}
        self.api = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "layerprune.api.app:create_app", "--factory",
             "--host", "127.0.0.1", "--port", str(self.api_port), "--log-level", "warning"],
            env=env, cwd=procs.REPO, stdout=self._api_log, stderr=subprocess.STDOUT, start_new_session=True)
        procs.wait_for(lambda: procs.port_open(self.api_port), 60, what="the API")
        return f"http://127.0.0.1:{self.api_port}"

    def worker_of(self, job_id: str) -> procs.WorkerProcess:
        """The worker process whose job child (pid in ``worker_id``) runs ``job_id``."""
        child_pid = int(self.job(job_id).worker_id.split(":")[1])
        group = os.getpgid(child_pid)
        return next(w for w in self.workers if w.proc is not None and w.proc.pid == group)

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        if self.api is not None and self.api.poll() is None:
            self.api.terminate()
            try:
                self.api.wait(10)
            except subprocess.TimeoutExpired:
                self.api.kill()
                self.api.wait(10)

    def logs(self) -> str:
        out = []
        for p in sorted(self.tmp.glob("*.log")):
            out.append(f"==== {p.name}\n" + p.read_text(errors="replace")[-6000:])
        return "\n".join(out)

    # ---- jobs --------------------------------------------------------------------------
    def spec(self, **stages: Any) -> dict[str, Any]:
        from layerprune.api.schemas import JobCreate

        # The stored body, as POST /v1/jobs stores it: the spec and the service fields (priority ...).
        body = {"model": str(self.model_root / "tiny"), **stages}
        return JobCreate.model_validate(body).model_dump(mode="json")

    def submit(self, spec: dict[str, Any], *, tenant: str = "tenant-a", queue: str = "cpu",
               max_attempts: int = 3, send: bool = True) -> str:
        """Commit a job and send it, as POST /v1/jobs does (a failed send leaves it to the outbox)."""
        from layerprune.queue.celery_app import send_job
        from layerprune.queue.transitions import create_job, mark_dispatched

        with self.sessions() as s:
            job = create_job(s, tenant, spec, queue=queue, max_attempts=max_attempts)
            s.commit()
            job_id = job.id
        if send:
            try:
                send_job(job_id, queue, int(spec.get("priority") or 0))
            except Exception:  # noqa: BLE001 - broker down: the outbox sends it later
                return job_id
            with self.sessions() as s:
                mark_dispatched(s, job_id, only_if_unsent=True)
        return job_id

    def job(self, job_id: str) -> Any:
        from layerprune.db.models import Job

        with self.sessions() as s:
            return s.get(Job, job_id)

    def events(self, job_id: str) -> list[Any]:
        from layerprune.db.models import JobEvent

        with self.sessions() as s:
            return list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)))

    def wait_status(self, job_id: str, statuses: tuple[str, ...] = TERMINAL, timeout: float = 60) -> Any:
        def check() -> Any:
            try:
                job = self.job(job_id)
            except Exception:  # noqa: BLE001 - the database may be restarting in this test
                return None
            return job if job is not None and job.status in statuses else None

        try:
            return procs.wait_for(check, timeout, 0.25, what=f"{job_id} in {statuses}")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\nlast state: {self._brief(job_id)}\n{self.logs()}") from None

    def wait_progress(self, job_id: str, stage: str, min_step: int = 0, timeout: float = 60) -> None:
        def check() -> bool:
            for e in self.events(job_id):
                if e.type == "progress" and e.data.get("stage") == stage and (e.data.get("step") or 0) >= min_step:
                    return True
            return False

        try:
            procs.wait_for(check, timeout, 0.25, what=f"{job_id} at {stage} step {min_step}")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\nlast state: {self._brief(job_id)}\n{self.logs()}") from None

    def _brief(self, job_id: str) -> str:
        try:
            job = self.job(job_id)
            evs = [(e.type, e.message[:80]) for e in self.events(job_id)][-15:]
            return json.dumps({"status": job.status, "attempts": job.attempts, "error": job.error,
                               "events": evs}, default=str)
        except Exception as exc:  # noqa: BLE001
            return f"(unreadable: {exc})"

    def running_events(self, job_id: str) -> int:
        return sum(1 for e in self.events(job_id) if e.type == "state" and e.data.get("status") == "running")


def wait_until(cond, timeout: float, what: str) -> Any:  # noqa: ANN001
    return procs.wait_for(cond, timeout, 0.25, what=what)


def now() -> float:
    return time.monotonic()
