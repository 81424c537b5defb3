"""The Celery app and its settings: publishing a job id to a broker queue, and broker health.

Postgres (or SQLite) is the truth; a broker message carries only a job id and may be lost or
delivered twice without harm, because a worker claims the job row atomically before running it
(``layerprune.queue.transitions.claim_job``). A job the broker did not take is sent later by the
outbox (``layerprune.queue.outbox``).

This module is imported by the API and must not import ``layerprune.worker``: tasks are sent by
name (``layerprune.run_job``); ``layerprune.worker.app`` registers them on this same app.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from celery import Celery

from layerprune.settings import Settings, get_settings

log = logging.getLogger(__name__)

TASK_NAME = "layerprune.run_job"
QUEUES = ("gpu", "cpu")

# A publish to an unreachable broker must fail fast (the API answers 201 and the sweep retries),
# not hang a request for the broker client's default minute of reconnects.
_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}


def _filesystem_options(settings: Settings) -> dict[str, Any]:
    folder = settings.broker_folder
    queue_dir = folder / "queue"
    processed = folder / "processed"
    control = folder / "control"
    for d in (queue_dir, processed, control):
        d.mkdir(parents=True, exist_ok=True)
    # Producers and consumers share one folder: "in" and "out" are the same directory.
    return {
        "data_folder_in": str(queue_dir),
        "data_folder_out": str(queue_dir),
        "processed_folder": str(processed),
        "control_folder": str(control),
        "store_processed": False,
    }


# A job's ``priority`` (−100…100, higher runs first) → a Redis message level (0 is served first).
# Ten levels (kombu's Redis transport keeps one list per level); the edges favour the small
# numbers people actually use, so 0, 1, 5 and 10 are all distinct.
BROKER_PRIORITY_LEVELS = 10
# Levels by priority: 50…100, 10…49, 5…9, 1…4, 0, −1…−4, −5…−9, −10…−49, −50…−99, −100.
_PRIORITY_EDGES = (50, 10, 5, 1, 0, -4, -9, -49, -99)  # priority ≥ edge i → level i; below all → 9


def broker_priority(priority: int) -> int:
    for level, edge in enumerate(_PRIORITY_EDGES):
        if priority >= edge:
            return level
    return len(_PRIORITY_EDGES)


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings for hour-long, one-at-a-time GPU jobs."""
    broker = settings.effective_broker_url
    transport_options: dict[str, Any] = {}
    if broker.startswith("filesystem"):
        transport_options = _filesystem_options(settings)
    elif broker.startswith(("redis", "rediss")):
        # Redis re-delivers an unacked message after visibility_timeout. Jobs last hours and a
        # duplicate is harmless (claim is atomic) but wasteful: keep it beyond the hard limit.
        transport_options = {"visibility_timeout": settings.task_time_limit + 3600,
                             "socket_connect_timeout": 3, "socket_timeout": 10,
                             # One Redis list per level, polled in this order: see broker_priority.
                             "priority_steps": list(range(BROKER_PRIORITY_LEVELS))}
    return {
        "broker_url": broker,
        "broker_transport_options": transport_options,
        "broker_connection_timeout": 3,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,  # a worker waits for its broker forever
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_max_tasks_per_child": 1,
        "worker_concurrency": 1,
        "task_soft_time_limit": settings.task_soft_time_limit,
        "task_time_limit": settings.task_time_limit,
        "task_default_queue": "gpu",
        "task_create_missing_queues": True,
        "task_routes": {TASK_NAME: {"queue": "gpu"}},
        "task_publish_retry_policy": _PUBLISH_RETRY_POLICY,
        "worker_hijack_root_logger": False,
        # A broker outage must not abort an hour of GPU work: the job's truth is in the database,
        # and the running attempt still finishes and records its result there.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_send_task_events": False,
        "broker_heartbeat": 0,
    }


def make_celery(settings: Settings | None = None) -> Celery:
    app = Celery("layerprune")
    app.conf.update(celery_config(settings or get_settings()))
    return app


celery_app: Celery = make_celery()


def configure(settings: Settings | None = None) -> Celery:
    """Re-read settings into the shared ``celery_app`` (tests change the environment)."""
    settings = settings or get_settings()
    # Drop the pooled broker connections and the producer pool built on them: both remember the
    # previous broker URL. (app.close() would also deregister the app, so it is not used.)
    pool = celery_app._pool  # noqa: SLF001
    if pool is not None:
        try:
            pool.force_close_all()
        except Exception:  # noqa: BLE001 - the old broker may be gone
            pass
    celery_app._pool = None  # noqa: SLF001
    amqp = celery_app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None  # noqa: SLF001
    celery_app.conf.update(celery_config(settings))
    return celery_app


def send_job(job_id: str, queue: str, priority: int = 0) -> None:
    """Publish one message carrying ``job_id`` on ``queue``; raises when the broker is unreachable.

    On Redis, a worker takes the waiting message of the highest ``priority`` first. (The embedded
    transports have no priorities: FIFO there, apart from the outbox sending its backlog in
    priority order.)
    """
    if queue not in QUEUES:
        raise ValueError(f"unknown queue {queue!r}")
    options: dict[str, Any] = {}
    if (celery_app.conf.broker_url or "").startswith(("redis", "rediss")):
        options["priority"] = broker_priority(priority)
    celery_app.send_task(TASK_NAME, args=[job_id], queue=queue, routing_key=queue,
                         retry=True, retry_policy=_PUBLISH_RETRY_POLICY, **options)


def broker_ok(timeout: float = 2.0) -> bool:
    """Whether the broker accepts a connection now (for /readyz)."""
    broker = celery_app.conf.broker_url or ""
    if broker.startswith("filesystem"):
        folder = celery_app.conf.broker_transport_options.get("data_folder_in")
        if not folder:
            return False
        return Path(folder).is_dir()
    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.1,
                                   interval_max=0.1, timeout=timeout)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not reachable"
        return False
