"""Migrations: empty → head → base → head on Postgres and SQLite, and the models match them."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, inspect

from tests.service_fixtures import create_pg_database, drop_pg_database

TABLES = {"api_keys", "jobs", "job_events", "artifacts", "files", "idempotency_keys", "webhook_deliveries"}


@pytest.fixture(params=["postgres", "sqlite"])
def empty_db(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
        return
    try:
        url = create_pg_database("lp_mig")
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"no Postgres: {exc}")
    yield url
    drop_pg_database(url)


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _diff(url: str) -> list:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from layerprune.db.models import Base

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()


def test_up_down_up(empty_db):
    from layerprune.db.migrate import (
        current_revision,
        downgrade_to,
        head_revision,
        is_at_head,
        upgrade_to_head,
    )

    assert _tables(empty_db) == set() and not is_at_head(empty_db)
    upgrade_to_head(empty_db)
    assert is_at_head(empty_db) and current_revision(empty_db) == head_revision()
    assert _tables(empty_db) == TABLES
    assert _diff(empty_db) == []  # the models and the migrations describe the same schema
    upgrade_to_head(empty_db)  # idempotent
    downgrade_to(empty_db, "base")
    assert _tables(empty_db) == set() and current_revision(empty_db) is None
    upgrade_to_head(empty_db)
    assert is_at_head(empty_db) and _tables(empty_db) == TABLES


def test_schema_works_after_migration(empty_db):
    """Rows round-trip on both backends: JSON, aware UTC times, increasing seq."""
    from datetime import UTC, datetime

    from layerprune.db.events import add_event
    from layerprune.db.jobs import create_job
    from layerprune.db.migrate import upgrade_to_head
    from layerprune.db.models import Job
    from layerprune.db.session import dispose_engines, session_scope

    upgrade_to_head(empty_db)
    try:
        with session_scope(empty_db) as s:
            a = create_job(s, "t", {"prune": {"ratio": 0.25}, "metadata": {"k": "v"}}, queue="cpu", max_attempts=3)
            b = create_job(s, "t", {"prune": {"ratio": 0.5}}, queue="gpu", max_attempts=3)
            e1 = add_event(s, a.id, "log", "one")
            e2 = add_event(s, a.id, "log", "two")
            ids = (a.id, b.id)
        with session_scope(empty_db) as s:
            ja, jb = s.get(Job, ids[0]), s.get(Job, ids[1])
            assert ja.seq < jb.seq and e1.seq < e2.seq
            assert ja.spec == {"prune": {"ratio": 0.25}, "metadata": {"k": "v"}} and ja.metadata_ == {"k": "v"}
            assert ja.created_at.tzinfo is not None and abs(ja.created_at - datetime.now(UTC)).total_seconds() < 60
            assert ja.dispatched_at is None and ja.attempts == 0 and ja.status == "queued"
    finally:
        dispose_engines()


def test_concurrent_upgrades_are_safe(empty_db):
    import threading

    from layerprune.db.migrate import is_at_head, upgrade_to_head

    errors: list[BaseException] = []

    def run():
        try:
            upgrade_to_head(empty_db)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and is_at_head(empty_db)
