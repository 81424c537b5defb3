"""The worker process: a Celery worker that runs one job at a time, plus the sweeper thread.

``main(argv)`` is what ``layerprune worker`` calls. It brings the database to the newest schema
if needed (the policy of ``db.migrate.ensure_schema``), starts the queue's sweeper
(``layerprune.queue.sweeper``: outbox dispatch, reaper, idempotency-key purge, the same loop the
API runs) and then a Celery worker consuming
``settings.queues`` with one prefork child, recycled after every job (a fresh process per job:
no memory or CUDA state leaks from one job into the next). Extra ``argv`` items are passed to
Celery's ``worker`` command (``--loglevel``, ``-n``…).
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence

from layerprune.db.migrate import SchemaBehindError, ensure_schema
from layerprune.db.session import session_factory
from layerprune.queue.celery_app import broker_ok, configure
from layerprune.queue.sweeper import start_sweeper, sweep_once
from layerprune.settings import get_settings
from layerprune.webhooks import WebhookSender
from layerprune.worker.app import app as celery_worker_app  # as `app`, it would hide the submodule


def worker_argv(queues: Sequence[str], loglevel: str = "INFO", extra: Sequence[str] = ()) -> list[str]:
    name = f"layerprune-{os.getpid()}@{socket.gethostname()}"
    return ["worker", "-Q", ",".join(queues), "-c", "1", "-P", "prefork", "--loglevel", loglevel,
            "-n", name, "--without-gossip", "--without-mingle", "--without-heartbeat",
            "--max-tasks-per-child", "1", *extra]


def _preload() -> None:
    """Import the heavy libraries once in the parent: each job's forked child then starts at once.

    A fresh child per job would otherwise pay these imports (seconds) on every job. Importing
    torch does not initialise CUDA, so forking afterwards stays safe on GPU nodes.
    """
    modules = ["torch", "transformers", "safetensors.torch",
               "layerprune.core.sources", "layerprune.core.prune", "layerprune.core.finetune",
               "layerprune.core.evaluate", "layerprune.core.export", "layerprune.core.pipeline",
               "layerprune.worker.runner", "layerprune.webhooks"]
    # peft (LoRA only) is left out: it costs more start-up time than it saves a LoRA job.
    # transformers imports each architecture lazily; the common decoder families up front.
    modules += [f"transformers.models.{a}.modeling_{a}" for a in ("llama", "qwen2", "mistral", "gemma2")]
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a missing optional module only costs time later
            logging.getLogger(__name__).warning("preload of %s failed: %s", name, exc)


def _wait_for_schema(ensure_schema: Callable[[], None], behind: type[Exception]) -> None:
    """Apply db.migrate.ensure_schema's policy, waiting while the database is unreachable or, with
    LAYERPRUNE_AUTO_MIGRATE=0, behind (``behind``: its SchemaBehindError) until someone migrates it."""
    delay = 1.0
    while True:
        try:
            ensure_schema()
            return
        except behind as exc:
            logging.getLogger(__name__).error("%s; waiting, retrying in %.0fs", exc, delay)
        except Exception as exc:  # noqa: BLE001 - OperationalError while the database starts
            logging.getLogger(__name__).warning("database not ready (%s); retrying in %.0fs", exc, delay)
        time.sleep(delay)
        delay = min(delay * 2, 30.0)


def main(argv: Sequence[str] | None = None) -> None:
    settings = get_settings()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s")
    _wait_for_schema(lambda: ensure_schema(settings), SchemaBehindError)
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    configure(settings)
    # The pool forks a child per job while the sweeper and webhook threads run. Do their first sweep
    # here, before any thread exists, so the modules they import lazily (the broker's transport,
    # the database driver's dialect) are imported by now: a fork that lands mid-import in another thread
    # leaves that module's import lock held for ever in the child.
    try:
        sweep_once(session_factory())
        broker_ok()
    except Exception as exc:  # noqa: BLE001 - database or broker down: the sweeper retries
        logging.getLogger(__name__).warning("first sweep failed (%s); the sweeper will retry", exc)
    _preload()
    start_sweeper(settings=settings)
    WebhookSender(session_factory(), settings=settings).start()
    celery_worker_app.worker_main(worker_argv(settings.queues, settings.log_level.upper(), list(argv or [])))
