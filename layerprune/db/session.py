"""Engines and sessions.

SQLite (the embedded default) is shared by the API and worker processes: WAL lets readers run
beside one writer, and every transaction starts with ``BEGIN IMMEDIATE`` so two writers queue on
the busy timeout instead of failing with "database is locked" when a read turns into a write.
Postgres connections are checked before use (``pool_pre_ping``), so a restarted server is
reconnected to without failing a request, and connecting gives up after a few seconds so a
database outage is a quick 503 rather than a hung request.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from layerprune.settings import get_settings

_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_factories: dict[str, sessionmaker[Session]] = {}

SQLITE_BUSY_TIMEOUT_S = 30


def database_url(url: str | None = None) -> str:
    return url or get_settings().effective_database_url


def _sqlite_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin (see _on_begin).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        _use_wal(cur)
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _use_wal(cur: Any) -> None:
    """Put the database in WAL mode (a setting stored in the file: once set, later connections only read it).

    Switching needs the database to itself, and SQLite answers "database is locked" at once,
    without waiting out the busy timeout, while another connection holds a lock: which happens
    when several processes (or threads) open a brand-new database together. So retry until the
    timeout; the switch itself takes microseconds.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            if cur.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        return _sqlite_engine(url)
    connect_args: dict[str, Any] = {}
    if url.startswith("postgresql"):
        connect_args["connect_timeout"] = 5
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, pool_timeout=10,
                         connect_args=connect_args)


def get_engine(url: str | None = None) -> Engine:
    """The process-wide engine for ``url`` (default: the settings' database)."""
    url = database_url(url)
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = _make_engine(url)
        return engine


def session_factory(url: str | None = None) -> sessionmaker[Session]:
    """A ``sessionmaker`` bound to :func:`get_engine` (objects stay readable after commit)."""
    url = database_url(url)
    engine = get_engine(url)
    with _lock:
        factory = _factories.get(url)
        if factory is None:
            factory = _factories[url] = sessionmaker(engine, expire_on_commit=False)
        return factory


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """One transaction: commit when the block ends normally, roll back when it raises."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def dispose_engines() -> None:
    """Close every pooled connection (tests that drop their database; forked processes)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _factories.clear()


def reset_after_fork() -> None:
    """In a forked child: forget the parent's engines without touching their sockets or locks.

    Celery's prefork pool forks a fresh child per job while the worker's sweeper and webhook
    threads use these engines. A lock held by one of those threads at the moment of the fork stays
    held forever in the child (no thread there will release it), so the lock is replaced, never
    acquired; the pooled connections are dropped unclosed (closing would end the parent's sessions).
    """
    global _lock
    _lock = threading.Lock()
    for engine in list(_engines.values()):
        engine.dispose(close=False)
    _engines.clear()
    _factories.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=reset_after_fork)
