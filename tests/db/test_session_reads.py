"""Read-only sessions (db.session.read_session_factory): a connection only while a statement runs."""

from __future__ import annotations

import threading
import time

from sqlalchemy import select

from layerprune.db.jobs import get_job
from layerprune.db.models import Job
from layerprune.db.session import get_engine, read_session_factory, session_factory
from layerprune.queue.transitions import create_job

SPEC = {"model": "x", "prune": {"metric": "reverse_order", "ratio": 0.25}}


def _job(url: str) -> str:
    with session_factory(url)() as s:
        job = create_job(s, "t", SPEC, queue="cpu", max_attempts=3)
        s.commit()
        return job.id


def test_the_connection_goes_back_after_each_statement(db):
    job_id = _job(db)
    pool = get_engine(db).pool
    with read_session_factory(db)() as s:
        job = get_job(s, "t", job_id)
        assert job is not None and job.status == "queued"  # loaded objects stay readable
        assert not s.in_transaction() and pool.checkedout() == 0
        assert s.scalar(select(Job.status).where(Job.id == job_id)) == "queued"
        assert pool.checkedout() == 0
        assert job.spec["prune"]["ratio"] == 0.25  # no reload, no connection
        assert pool.checkedout() == 0


def test_a_read_session_that_writes_keeps_its_transaction(db):
    job_id = _job(db)
    pool = get_engine(db).pool
    with read_session_factory(db)() as s:
        job = get_job(s, "t", job_id)
        job.priority = 7
        s.flush()
        assert s.in_transaction() and pool.checkedout() == 1
        assert s.scalar(select(Job.priority).where(Job.id == job_id)) == 7  # same transaction
        s.commit()
    with read_session_factory(db)() as s:
        assert get_job(s, "t", job_id).priority == 7
    assert pool.checkedout() == 0


def test_sqlite_readers_do_not_wait_for_the_writer(tmp_path):
    """A writer holds SQLite's write lock (BEGIN IMMEDIATE); readers still answer at once (WAL)."""
    from layerprune.db.migrate import upgrade_to_head
    from layerprune.db.session import dispose_engines

    url = f"sqlite:///{tmp_path / 'wal.db'}"
    upgrade_to_head(url)
    try:
        job_id = _job(url)
        writer = session_factory(url)()
        writer.execute(select(Job.id)).all()  # BEGIN IMMEDIATE: the write lock is now held
        try:
            times: list[float] = []
            errors: list[BaseException] = []

            def read() -> None:
                try:
                    started = time.monotonic()
                    with read_session_factory(url)() as s:
                        assert get_job(s, "t", job_id) is not None
                    times.append(time.monotonic() - started)
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)

            threads = [threading.Thread(target=read) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(20)
            assert not errors and len(times) == 8
            assert max(times) < 5, times  # a reader behind the lock would wait out the 30 s busy timeout
        finally:
            writer.close()
    finally:
        dispose_engines()
