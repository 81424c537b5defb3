"""Small helpers shared by the API tests: direct row inserts for states only a worker reaches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from layerprune.db.models import Artifact, Job, utcnow
from layerprune.db.session import session_scope

PRUNE = {"prune": {"metric": "reverse_order", "ratio": 0.25}}


def set_status(db_url: str, job_id: str, status: str, **values: Any) -> None:
    with session_scope(db_url) as s:
        job = s.get(Job, job_id)
        job.status = status
        for k, v in values.items():
            setattr(job, k, v)
        if status in ("succeeded", "failed", "cancelled"):
            job.finished_at = utcnow()


def publish(db_url: str, settings: Any, tenant: str, job_id: str, files: dict[str, bytes], tmp: Path) -> None:
    """Mark a job succeeded with ``files`` as its artifacts, stored through the real LocalStore."""
    from layerprune.artifact_store import get_store

    src = tmp / f"out-{job_id}"
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    stored = get_store(settings).put_dir(src, f"{tenant}/{job_id}")
    with session_scope(db_url) as s:
        for f in stored:
            s.add(Artifact(job_id=job_id, path=f["path"], size_bytes=f["size_bytes"], sha256=f["sha256"],
                           storage_key=f["storage_key"]))
        job = s.get(Job, job_id)
        job.status = "succeeded"
        job.finished_at = utcnow()
        job.result = {"num_layers_before": 30, "num_layers_after": 23}
