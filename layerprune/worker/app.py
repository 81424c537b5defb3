"""The worker's Celery app: the shared app of ``layerprune.dispatch`` with the tasks registered.

Start a worker with ``layerprune.worker.main()`` (``layerprune worker``), or with Celery's own
command line: ``celery -A layerprune.worker.app worker -Q gpu,cpu -c 1``.
"""

from __future__ import annotations

import logging

from celery.signals import worker_process_init

from layerprune.dispatch import celery_app
from layerprune.worker import tasks  # noqa: F401 - registers layerprune.run_job

app = celery_app
log = logging.getLogger(__name__)


@worker_process_init.connect
def _forget_parent_connections(**_: object) -> None:
    """A forked child must not reuse the parent's pooled database sockets (the sweeper uses them).

    ``db.session`` already does this at every fork (``os.register_at_fork``); this covers a pool
    that creates its children some other way. Idempotent.
    """
    from layerprune.db import session

    session.reset_after_fork()
