"""Fixtures of the worker tests: migrated databases (SQLite file, a fresh Postgres database)."""

from __future__ import annotations

import pytest

from tests.worker import procs


def _migrated(url: str) -> str:
    from layerprune.db.migrate import upgrade_to_head

    upgrade_to_head(url)
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    from layerprune.db.session import dispose_engines

    if request.param == "sqlite":
        url = _migrated(f"sqlite:///{tmp_path / 'q.db'}")
        yield url
        dispose_engines()
        return
    if not procs.shared_pg_available():
        pytest.skip("no Postgres on localhost:5432")
    url = procs.create_database()
    try:
        yield _migrated(url)
    finally:
        dispose_engines()
        procs.drop_database(url)


@pytest.fixture
def sessions(db_url):
    from layerprune.db.session import session_factory

    return session_factory(db_url)


def new_job(sessions, spec=None, *, tenant="t1", queue="cpu", max_attempts=2) -> str:
    from layerprune.db.jobs import create_job

    with sessions() as s:
        job = create_job(s, tenant, spec or {"model": "x", "prune": {"metric": "reverse_order", "ratio": 0.25}},
                         queue=queue, max_attempts=max_attempts)
        s.commit()
        return job.id
