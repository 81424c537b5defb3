"""Fixtures of the worker tests: migrated databases (SQLite file, a fresh Postgres database)."""

from __future__ import annotations

import os

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
    from layerprune.queue.transitions import create_job

    with sessions() as s:
        job = create_job(s, tenant, spec or {"model": "x", "prune": {"metric": "reverse_order", "ratio": 0.25}},
                         queue=queue, max_attempts=max_attempts)
        s.commit()
        return job.id


@pytest.fixture
def private_redis():
    import shutil

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (needed for a private Redis)")
    r = procs.PrivateRedis()
    r.start()
    yield r
    r.close()


@pytest.fixture
def private_pg():
    import glob

    if not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        pytest.skip("Postgres server binaries (initdb/pg_ctl) are not installed")
    pg = procs.PrivatePostgres()
    pg.start()
    yield pg
    pg.close()


def _service(tmp_path, database_url, broker_url, tiny_root, **extra):
    from layerprune.db.migrate import upgrade_to_head
    from tests.service_fixtures import restore_service_env
    from tests.worker.service import Service

    saved = {k: v for k, v in os.environ.items() if k.startswith("LAYERPRUNE_")}
    svc = Service(tmp_path, database_url, broker_url, tiny_root, extra_env=extra)
    svc.apply_env()
    upgrade_to_head(database_url)
    try:
        yield svc
    finally:
        svc.close()
        restore_service_env(saved)


@pytest.fixture
def pg_redis_service(tmp_path, tiny_root, private_redis):
    """Shared Postgres (a fresh database), a private Redis, no workers yet."""
    if not procs.shared_pg_available():
        pytest.skip("no Postgres on localhost:5432")
    url = procs.create_database()
    try:
        yield from _service(tmp_path, url, private_redis.url, tiny_root)
    finally:
        procs.drop_database(url)


@pytest.fixture
def private_pg_service(tmp_path, tiny_root, private_pg, private_redis):
    """A private Postgres (stoppable) and a private Redis."""
    url = procs.create_database(private_pg.url)
    yield from _service(tmp_path, url, private_redis.url, tiny_root, LAYERPRUNE_LEASE_SECONDS="30")


@pytest.fixture
def embedded_service(tmp_path, tiny_root):
    """The embedded default: SQLite under the data dir and the filesystem:// Celery transport."""
    (tmp_path / "data").mkdir()
    yield from _service(tmp_path, f"sqlite:///{tmp_path / 'data' / 'layerprune.db'}", "", tiny_root)
