"""worker.app: the worker's Celery app is the dispatcher's, with the job task registered under
the name the dispatcher sends (``celery -A layerprune.worker.app worker`` finds it as ``app``)."""

from __future__ import annotations


def test_the_app_is_the_dispatchers_with_the_job_task() -> None:
    from layerprune import dispatch
    from layerprune.worker import app as module

    assert module.app is dispatch.celery_app
    task = module.app.tasks[dispatch.TASK_NAME]
    assert task.name == dispatch.TASK_NAME
    assert task.run.__module__ == "layerprune.worker.tasks"
    # A message sent by the API's dispatcher is routed to this very task object.
    assert dispatch.celery_app.tasks[dispatch.TASK_NAME] is task
