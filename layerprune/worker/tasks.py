"""The Celery task: a message carries only a job id; everything else comes from the database."""

from __future__ import annotations

from sqlalchemy.exc import InterfaceError, OperationalError

from layerprune.queue.celery_app import TASK_NAME, celery_app

DB_RETRY_SECONDS = 5
DB_RETRY_MAX = 120  # ten minutes of database outage before the message is given up (the outbox resends)


@celery_app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_job(self, job_id: str) -> str | None:  # noqa: ANN001 - the bound Celery task
    """Run one attempt of ``job_id`` (see ``layerprune.worker.runner``); returns its final status.

    A database that cannot be reached before the job is claimed (Postgres restarting) is not the
    job's failure: the message is retried a little later instead of being dropped.
    """
    from layerprune.worker.runner import run_job as run  # noqa: PLC0415 - torch: loaded by _preload, after start-up

    try:
        return run(job_id)
    except (OperationalError, InterfaceError) as exc:
        raise self.retry(exc=exc, countdown=DB_RETRY_SECONDS, max_retries=DB_RETRY_MAX) from exc
