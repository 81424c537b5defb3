"""Apply and inspect Alembic migrations programmatically (``layerprune migrate``, API/worker start).

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

from layerprune.db.session import database_url

ROOT = Path(__file__).resolve().parents[2]
_MIGRATION_LOCK = 7_246_101  # any fixed number shared by every layerprune process


def alembic_config(url: str | None = None) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
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
        from layerprune.db.session import _make_engine

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
        from layerprune.db.session import get_engine

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
