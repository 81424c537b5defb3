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
    """A forked child must not reuse the parent's pooled database sockets (the sweeper uses them)."""
    from layerprune.db import session

    with session._lock:  # noqa: SLF001 - the pool API has no public "after fork" reset
        for engine in session._engines.values():  # noqa: SLF001
            engine.dispose(close=False)
        session._engines.clear()  # noqa: SLF001
        session._factories.clear()  # noqa: SLF001
