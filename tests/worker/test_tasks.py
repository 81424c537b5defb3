"""worker.tasks: the Celery task runs one attempt of a job by id (executed eagerly here, in this
process): a job it cannot claim is dropped; a database that cannot be reached is retried later
instead of failing the job. (Real worker processes running jobs: test_processes.py.)"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from layerprune.db.models import Job
from layerprune.db.session import session_scope
from layerprune.queue.celery_app import TASK_NAME
from layerprune.worker.tasks import DB_RETRY_MAX, DB_RETRY_SECONDS, run_job
from tests.service_fixtures import service_env


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[str]:
    from layerprune.db.migrate import upgrade_to_head
    from layerprune.db.session import dispose_engines

    with service_env(data_dir=tmp_path, database_url=None, broker_url=None, storage_url=None):
        url = f"sqlite:///{tmp_path / 'layerprune.db'}"
        upgrade_to_head(url)
        yield url
        dispose_engines()


def test_the_task_options() -> None:
    assert run_job.name == TASK_NAME
    # Redelivered when the worker dies mid-job (the runner's lease decides who may run it), and
    # no result backend is involved: the database holds the outcome.
    assert run_job.acks_late and run_job.reject_on_worker_lost and run_job.ignore_result


def test_a_job_that_cannot_be_claimed_is_dropped(embedded: str) -> None:
    with session_scope(embedded) as s:
        done = Job(tenant="t1", status="succeeded", spec={"prune": {"metric": "reverse_order", "ratio": 0.25}})
        s.add(done)
        s.flush()
        done_id = done.id
    for job_id in ("job_" + "z" * 24, done_id):
        result = run_job.apply(args=[job_id])
        assert result.successful() and result.result is None, job_id
    with session_scope(embedded) as s:
        job = s.get(Job, done_id)
        assert job.status == "succeeded" and job.attempts == 0  # untouched


class SlammingDoor:
    """A TCP port that accepts each connection and closes it at once (a database restarting),
    counting the connections."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.count = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.count += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


def test_an_unreachable_database_is_retried_until_the_limit_not_failed_at_once(tmp_path: Path) -> None:
    from layerprune.db.session import dispose_engines

    door = SlammingDoor()
    url = f"postgresql+psycopg://postgres@127.0.0.1:{door.port}/nothing"
    job_id = "job_" + "a" * 24
    with service_env(data_dir=tmp_path, database_url=url, broker_url=None):
        try:
            # Eagerly, Celery runs each retry at once (no countdown): the last allowed attempt gives
            # the message up with the database's error…
            last = run_job.apply(args=[job_id], retries=DB_RETRY_MAX)
            assert last.state == "FAILURE" and isinstance(last.result, OperationalError)
            per_attempt, door.count = door.count, 0
            assert per_attempt >= 1
            # …and a first delivery is attempted DB_RETRY_MAX more times before that.
            first = run_job.apply(args=[job_id])
            assert first.state == "FAILURE" and isinstance(first.result, OperationalError)
            assert door.count == (DB_RETRY_MAX + 1) * per_attempt
        finally:
            dispose_engines()
            door.close()
    assert DB_RETRY_SECONDS * DB_RETRY_MAX == 600  # ten minutes of outage, as the module says
