"""The worker's Celery app: the shared app of ``layerprune.queue.celery_app`` with the tasks registered.

Start a worker with ``layerprune.worker.main()`` (``layerprune worker``), or with Celery's own
command line: ``celery -A layerprune.worker.app worker -Q gpu,cpu -c 1``.
"""

from __future__ import annotations

from layerprune.queue.celery_app import celery_app
from layerprune.worker import tasks  # noqa: F401 - registers layerprune.run_job

app = celery_app
