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
    from layerprune.db.migrate import upgrade_to_head
    from layerprune.db.models import Job
    from layerprune.db.session import dispose_engines, session_scope
    from layerprune.queue.transitions import create_job

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


def _legacy_key(url: str, key_id: str, tenant: str, key: str) -> None:
    """A row as 0001's code wrote it: sha256_hex(key), no scheme column."""
    import hashlib
    from datetime import UTC, datetime

    from sqlalchemy import text

    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO api_keys (id, tenant, key_hash, name, created_at) "
                              "VALUES (:i, :t, :h, 'old', :c)"),
                         {"i": key_id, "t": tenant, "h": hashlib.sha256(key.encode()).hexdigest(),
                          "c": datetime.now(UTC).replace(tzinfo=None)})
    finally:
        engine.dispose()


def _key_rows(url: str) -> dict[str, tuple[str, str, object]]:
    from layerprune.db.models import ApiKey
    from layerprune.db.session import session_scope

    with session_scope(url) as s:
        return {r.id: (r.key_hash, r.hash_scheme, r.revoked_at) for r in s.query(ApiKey)}


def test_0002_rehashes_existing_keys_with_the_secret(empty_db):
    """Secret known when migrating: every 0001 row is upgraded at once, and its key still works."""
    import hashlib

    from layerprune.db.keys import SCHEME_HMAC, tenant_for_key
    from layerprune.db.migrate import downgrade_to, upgrade_to_head
    from layerprune.db.session import dispose_engines, session_scope
    from tests.service_fixtures import service_env

    upgrade_to_head(empty_db)
    downgrade_to(empty_db, "0001")
    _legacy_key(empty_db, "key_old1", "t1", "old-key-one")
    _legacy_key(empty_db, "key_old2", "t2", "old-key-two")
    try:
        with service_env(key_secret="s" * 40, database_url=empty_db):
            upgrade_to_head(empty_db)
            rows = _key_rows(empty_db)
            assert {scheme for _, scheme, _ in rows.values()} == {SCHEME_HMAC}
            assert rows["key_old1"][0] != hashlib.sha256(b"old-key-one").hexdigest()
            with session_scope(empty_db) as s:
                assert tenant_for_key(s, "old-key-one") == "t1" and tenant_for_key(s, "old-key-two") == "t2"
                assert tenant_for_key(s, "old-key-three") is None
            # Back to 0001: a keyed hash can never match there again, so it is revoked, not left dead.
            downgrade_to(empty_db, "0001")
            engine = create_engine(empty_db)
            try:
                with engine.connect() as conn:
                    revoked = conn.exec_driver_sql("SELECT id FROM api_keys WHERE revoked_at IS NOT NULL").all()
            finally:
                engine.dispose()
            assert {r[0] for r in revoked} == {"key_old1", "key_old2"}
    finally:
        dispose_engines()


def test_0002_without_the_secret_upgrades_each_key_on_first_use(empty_db):
    """Migrated where no secret is configured (a CI box, say): rows keep sha256 and still
    authenticate; the first use of a key with the secret stores its keyed hash."""
    import hashlib

    from layerprune.db.keys import SCHEME_HMAC, SCHEME_SHA256, add_key, hash_key, tenant_for_key
    from layerprune.db.migrate import downgrade_to, upgrade_to_head
    from layerprune.db.session import dispose_engines, session_scope
    from tests.service_fixtures import service_env

    upgrade_to_head(empty_db)
    downgrade_to(empty_db, "0001")
    _legacy_key(empty_db, "key_lazy", "t1", "lazy-key")
    _legacy_key(empty_db, "key_idle", "t2", "idle-key")
    try:
        # A server database without LAYERPRUNE_KEY_SECRET: the migration cannot re-hash.
        with service_env(key_secret=None, database_url="postgresql+psycopg://nobody@127.0.0.1:1/x"):
            upgrade_to_head(empty_db)
        assert {s for _, s, _ in _key_rows(empty_db).values()} == {SCHEME_SHA256}
        with service_env(key_secret="s" * 40, database_url=empty_db):
            with session_scope(empty_db) as s:
                assert tenant_for_key(s, "lazy-key") == "t1"
                new = add_key(s, "t3")  # new keys are keyed from the start
            rows = _key_rows(empty_db)
            assert rows["key_lazy"][:2] == (hash_key("lazy-key"), SCHEME_HMAC)
            assert rows["key_idle"][:2] == (hashlib.sha256(b"idle-key").hexdigest(), SCHEME_SHA256)
            with session_scope(empty_db) as s:
                assert tenant_for_key(s, "lazy-key") == "t1" and tenant_for_key(s, new) == "t3"
                assert tenant_for_key(s, "idle-key") == "t2"
            assert _key_rows(empty_db)["key_idle"][1] == SCHEME_HMAC
    finally:
        dispose_engines()
