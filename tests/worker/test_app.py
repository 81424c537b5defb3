"""worker.app: the worker's Celery app is the queue's, with the job task registered under the
name the queue sends (``celery -A layerprune.worker.app worker`` finds it as ``app``)."""

from __future__ import annotations


def test_the_app_is_the_queues_with_the_job_task() -> None:
    from layerprune.queue import celery_app as queue
    from layerprune.worker import app as module

    assert module.app is queue.celery_app
    task = module.app.tasks[queue.TASK_NAME]
    assert task.name == queue.TASK_NAME
    assert task.run.__module__ == "layerprune.worker.tasks"
    # A message sent by the API (queue.send_job) is routed to this very task object.
    assert queue.celery_app.tasks[queue.TASK_NAME] is task
