"""Apply and inspect Alembic migrations programmatically, and the one policy of when to apply them.

The migrations are package data (``layerprune/migrations``), so a regular install migrates; the
Alembic configuration is built here, not read from an ini file. ``alembic.ini`` at the top of
the source tree serves only the ``alembic`` command of developers (``alembic revision``).

Several processes may start at once (an API and its workers): on Postgres an advisory lock makes
them migrate one after another; on SQLite the IMMEDIATE transactions of the engine do the same.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, pool, text

from layerprune.db.session import _make_engine, database_url, get_engine
from layerprune.settings import Settings, get_settings

MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"
_MIGRATION_LOCK = 7_246_101  # any fixed number shared by every layerprune process


class SchemaBehindError(ValueError):
    """The database's schema is not this code's and LAYERPRUNE_AUTO_MIGRATE=0 forbids migrating it here."""


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    # ConfigParser interpolates '%': a literal one in the path is written '%%'.
    cfg.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["url"] = database_url(url)
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def _run(url: str | None, fn, *args: str) -> None:  # noqa: ANN001 - an alembic.command function
    url = database_url(url)
    cfg = alembic_config(url)
    if url.startswith("sqlite"):
        # The service's SQLite engine begins every transaction IMMEDIATE: a second process that
        # migrates at the same time waits for the first instead of creating the tables twice.
        engine = _make_engine(url)
    else:
        engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("SELECT 1")  # begins the IMMEDIATE transaction now
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK})
                conn.commit()
            try:
                cfg.attributes["connection"] = conn
                fn(cfg, *args)
                conn.commit()
            finally:
                if conn.dialect.name == "postgresql":
                    conn.rollback()
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK})
                    conn.commit()
    finally:
        engine.dispose()


def upgrade_to_head(url: str | None = None) -> None:
    """Bring the database at ``url`` (default: settings) to the newest schema."""
    if database_url(url).startswith("sqlite"):
        get_engine(url)  # creates the SQLite file's folder
    _run(url, command.upgrade, "head")


def downgrade_to(url: str | None, revision: str = "base") -> None:
    _run(url, command.downgrade, revision)


def current_revision(url: str | None = None) -> str | None:
    engine = create_engine(database_url(url), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def is_at_head(url: str | None = None) -> bool:
    return current_revision(url) == head_revision()


def ensure_schema(settings: Settings | None = None) -> None:
    """The migration policy of every process that uses the database (API start-up, ``layerprune
    serve``, the worker, ``layerprune keys``, the demo's processes; ``settings`` default: the
    environment's): with ``auto_migrate`` (the
    default) bring the database to the newest schema; with ``LAYERPRUNE_AUTO_MIGRATE=0`` never
    migrate, and raise :class:`SchemaBehindError` (its message says what to run) unless the
    database is already at this code's schema. ``layerprune migrate`` migrates whatever the setting.

    A long-running process (API, worker) that gets the error waits, not ready, and retries until
    someone has migrated; a one-shot command stops with the message.
    """
    settings = settings or get_settings()
    url = settings.effective_database_url
    if url.startswith("sqlite"):
        get_engine(url)  # creates the SQLite file's folder, so that an empty database reads as empty
    current, head = current_revision(url), head_revision()
    if current == head:
        return
    if settings.auto_migrate:
        upgrade_to_head(url)
        return
    at = f"at revision {current}" if current else "empty (no schema)"
    raise SchemaBehindError(
        f"the database is {at} but this layerprune needs revision {head}, and LAYERPRUNE_AUTO_MIGRATE=0 "
        "forbids migrating at start: run 'layerprune migrate' (or unset LAYERPRUNE_AUTO_MIGRATE)")
