"""One attempt at one job: claim → heartbeat → pipeline → publish → exactly one terminal state.

- claim: an atomic UPDATE (``queue.transitions.claim_job``); a message for a job that another worker
  holds, or that already ended, is dropped here — that is what makes duplicate messages harmless;
- heartbeat: a thread extends the lease and turns a cancel request into the stop flag that core
  checks between units of work;
- pipeline: ``core.pipeline.run_pipeline`` in ``settings.work_dir / job_id``, which survives a
  retry (finished stages are skipped, healing resumes from its checkpoint);
- publish: the output directory is copied, hashed and fsynced into the artifact store first,
  then the artifact rows and ``succeeded`` commit in one transaction. If that commit is refused
  (cancelled meanwhile) the published copy is deleted: a failed or cancelled job exposes nothing.

Outcomes: typed core errors → failed {code, message}; Cancelled → cancelled; a full disk, of the
scratch space or the store, → ``disk_full`` and another store failure → ``storage_error`` (both
classified by ``storage_failure`` alone); anything else → failed ``internal_error`` with a
reference; the traceback goes to the server log only. Each run is an :class:`Attempt`.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from layerprune.artifact_store import get_store
from layerprune.core import refs
from layerprune.core.errors import Cancelled, DatasetError, LayerPruneError, ModelSourceError
from layerprune.core.pipeline import run_pipeline, stages_of
from layerprune.core.sources import resolve_model
from layerprune.core.spec import JobSpec
from layerprune.db.models import File, Job
from layerprune.db.session import session_factory as default_factory
from layerprune.queue.transitions import cancel_finish, claim_job, fail_job, finish_job
from layerprune.settings import Settings, get_settings
from layerprune.storage import ArtifactStore, StoredFile
from layerprune.storage_s3 import DiskFullError, storage_failure
from layerprune.worker.cache import FileResultCache
from layerprune.worker.heartbeat import Heartbeat
from layerprune.worker.hooks import JobReporter

log = logging.getLogger(__name__)

FINAL_WRITE_PATIENCE_S = 600.0  # how long a terminal write waits for an unreachable database


def make_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _retrying(fn: Callable[[], Any], what: str, patience: float = FINAL_WRITE_PATIENCE_S) -> Any:
    """Run a terminal database write, retrying while the database is unreachable."""
    deadline = time.monotonic() + patience
    delay = 0.5
    while True:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - OperationalError and friends while restarting
            if time.monotonic() > deadline:
                raise
            log.warning("%s failed (%s); retrying in %.1fs", what, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def resolve_files(session: Any, tenant: str, spec: JobSpec) -> dict[str, Path]:
    """Map the spec's uploaded-file refs ("file_…") to their stored paths (same tenant only)."""
    out: dict[str, Path] = {}
    for param, ref in spec.dataset_refs().items():
        if not refs.is_file(ref) or ref in out:
            continue
        row = session.execute(
            select(File.storage_path).where(File.id == ref, File.tenant == tenant, File.deleted_at.is_(None))
        ).first()
        if row is None or not Path(row.storage_path).is_file():
            raise DatasetError(f"file '{ref}' not found", param=param)
        out[ref] = Path(row.storage_path)
    return out


def resolve_job_model(session: Any, tenant: str, ref: str, store: ArtifactStore) -> Path:
    """``job:<id>`` → the published output directory of that succeeded job of the same tenant."""
    other_id = refs.job_id(ref)
    row = session.execute(select(Job.status, Job.result).where(Job.id == other_id, Job.tenant == tenant)).first()
    if row is None:
        raise ModelSourceError(f"job '{other_id}' not found", param="model")
    if row.status != "succeeded" or (row.result or {}).get("output_kind", "model") != "model":
        raise ModelSourceError(f"job '{other_id}' has no output model (status {row.status})", param="model")
    path = store.local_path(f"{tenant}/{other_id}")
    if path is None or not path.is_dir():
        raise ModelSourceError(f"the output of job '{other_id}' is not available on this worker", param="model")
    return path


def _resolve_source(spec: JobSpec, model_path: Path | None, settings: Settings) -> Any:
    def job_dir(_other_id: str) -> Path:
        # resolve_job_model already checked tenant, status and presence of that job's output.
        if model_path is None:
            raise ModelSourceError("job outputs can only be used inside the service", param="model")
        return model_path

    return resolve_model(spec.model, spec.revision, model_roots=settings.model_root_paths, job_dir=job_dir)


def run_job(job_id: str, *, settings: Settings | None = None, session_factory: Callable[[], Any] | None = None,
            store: ArtifactStore | None = None, worker_id: str | None = None) -> str | None:
    """Run one attempt of ``job_id``; returns the terminal status reached, or None if not claimed."""
    settings = settings or get_settings()
    if session_factory is None:
        session_factory = default_factory()
    store = store or get_store(settings)
    worker_id = worker_id or make_worker_id()

    with session_factory() as s:
        job = claim_job(s, job_id, worker_id, settings.lease_seconds)
        if job is None:
            log.info("job %s: not claimable (taken, finished or unknown); message dropped", job_id)
            return None
        tenant, raw_spec, number = job.tenant, dict(job.spec), job.attempts

    stop = threading.Event()
    beat = Heartbeat(session_factory, job_id, worker_id, lease_s=settings.lease_seconds,
                     interval=settings.heartbeat_seconds, poll=min(1.0, settings.heartbeat_seconds), stop=stop)
    beat.start()
    attempt = Attempt(job_id=job_id, worker_id=worker_id, tenant=tenant, raw_spec=raw_spec, number=number,
                      settings=settings, sessions=session_factory, store=store, stop=stop)
    try:
        status = attempt.run()
    finally:
        beat.close()
    if status in ("failed", "cancelled"):
        # This worker ended the job without success: no published copy may remain. (A worker
        # whose job was taken away deletes nothing: the files may be the new owner's.)
        store.delete_prefix(attempt.prefix)
    if status in ("succeeded", "failed", "cancelled"):
        # Scratch space only matters for a retry; a terminal job never retries.
        shutil.rmtree(attempt.work_dir, ignore_errors=True)
    return status


@dataclass
class Attempt:
    """One claimed attempt at one job, from the stored spec to exactly one terminal write."""

    job_id: str
    worker_id: str
    tenant: str
    raw_spec: dict[str, Any]  # the job's stored spec (the request body, service fields included)
    number: int  # 1 for the first attempt
    settings: Settings
    sessions: Callable[[], Any]
    store: ArtifactStore
    stop: threading.Event  # set by the heartbeat when a cancel is requested

    @property
    def work_dir(self) -> Path:
        return self.settings.work_dir / self.job_id

    @property
    def prefix(self) -> str:
        """Where the job's artifacts are published in the store."""
        return f"{self.tenant}/{self.job_id}"

    def run(self) -> str | None:
        """The terminal status this attempt wrote, or None when the job was taken away."""
        try:
            return self._succeed(*self._execute())
        except Cancelled:
            return self._cancelled()
        except LayerPruneError as exc:
            log.info("job %s failed: %s (%s)", self.job_id, exc.message, exc.code)
            return self._fail(exc.code, exc.message, {"param": exc.param} if exc.param else None)
        except Exception as exc:  # noqa: BLE001 - the job must still end in one terminal state
            return self._crashed(exc)

    def _execute(self) -> tuple[dict[str, Any], list[StoredFile]]:
        """Run the pipeline and publish its output: the job result and the stored files."""
        spec = JobSpec.from_stored(self.raw_spec)
        reporter = JobReporter(self.sessions, self.job_id, self.worker_id, stages_of(spec), self.stop,
                               interval=self.settings.progress_event_interval_seconds)
        hooks = reporter.hooks()
        if self.number > 1:
            hooks.info(f"attempt {self.number}: resuming from the stages finished before")
        with self.sessions() as s:
            dataset_paths = resolve_files(s, self.tenant, spec)
            model_path = resolve_job_model(s, self.tenant, spec.model, self.store) if refs.is_job(spec.model) else None
        hooks.check()
        source = _resolve_source(spec, model_path, self.settings)
        result = run_pipeline(spec, source, self.work_dir, hooks, dataset_paths=dataset_paths,
                              on_stage=reporter.on_stage, cache=FileResultCache(self.settings.effective_cache_dir))
        hooks.check()
        try:
            stored = self.store.put_dir(self.work_dir / "output", self.prefix)
        except OSError as exc:  # full disk / store unreachable: a clear code (disk_full, storage_error)
            raise storage_failure(exc) from exc
        result["artifacts"] = [{"path": f["path"], "size_bytes": f["size_bytes"], "sha256": f["sha256"]}
                               for f in stored]
        return result, stored

    def _terminal(self, fn: Callable[..., bool], *args: Any) -> bool:
        """A terminal write for this worker's claim, retried while the database is unreachable."""
        def call() -> bool:
            with self.sessions() as s:
                return fn(s, self.job_id, self.worker_id, *args)

        return bool(_retrying(call, f"job {self.job_id}: {fn.__name__}"))

    def _succeed(self, result: dict[str, Any], stored: list[StoredFile]) -> str | None:
        if self._terminal(finish_job, result, stored):
            return "succeeded"
        return self._cancelled()

    def _cancelled(self) -> str | None:
        # Not this worker's running job any more: cancelling (→ cancelled) or taken away (None).
        return "cancelled" if self._terminal(cancel_finish) else None

    def _fail(self, code: str, message: str, data: dict[str, Any] | None = None) -> str | None:
        if self._terminal(fail_job, code, message, data):
            return "failed"
        return self._cancelled()

    def _crashed(self, exc: Exception) -> str | None:
        if isinstance(exc, OSError) and isinstance(full := storage_failure(exc), DiskFullError):
            return self._fail(full.code, full.message)  # the scratch disk filled up during a stage
        if type(exc).__name__ == "SoftTimeLimitExceeded":
            return self._fail("time_limit_exceeded",
                              f"the job ran past the time limit of {self.settings.task_soft_time_limit}s")
        # The traceback and the exception's text (paths, hosts, SQL, other tenants' names...) go
        # to the server log only; the tenant gets a reference that finds that log record.
        reference = "err_" + uuid.uuid4().hex[:16]
        log.error("job %s crashed (reference %s)", self.job_id, reference, exc_info=exc,
                  extra={"job_id": self.job_id, "tenant": self.tenant, "error_reference": reference})
        return self._fail("internal_error", f"internal error (reference {reference}); the service's operators "
                                            "can find its details in the server logs", {"reference": reference})
