"""The Celery task: a message carries only a job id; everything else comes from the database."""

from __future__ import annotations

from layerprune.dispatch import TASK_NAME, celery_app


@celery_app.task(name=TASK_NAME, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_job(job_id: str) -> str | None:
    """Run one attempt of ``job_id`` (see ``layerprune.worker.runner``); returns its final status."""
    from layerprune.worker.runner import run_job as run

    return run(job_id)
