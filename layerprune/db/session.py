"""Engines and sessions.

SQLite (the embedded default) is shared by the API and worker processes: WAL lets readers run
beside one writer, and every transaction that may write starts with ``BEGIN IMMEDIATE`` so two
writers queue on the busy timeout instead of failing with "database is locked" when a read turns
into a write. Read-only sessions (:func:`read_session_factory`) begin with a plain ``BEGIN``: in WAL
they never wait for each other nor for the writer.
Postgres connections are checked before use (``pool_pre_ping``), so a restarted server is
reconnected to without failing a request, and connecting gives up after a few seconds so a
database outage is a quick 503 rather than a hung request.

Pool sizes come from the settings (``LAYERPRUNE_DB_POOL_SIZE``, ``LAYERPRUNE_DB_MAX_OVERFLOW``,
``LAYERPRUNE_DB_POOL_TIMEOUT_SECONDS``); the API checks them against its thread count
(``api/deps.py`` explains why a worker thread must never wait for a connection).
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
from sqlalchemy.engine import Result, make_url
from sqlalchemy.orm import ORMExecuteState, Session, sessionmaker

from layerprune.settings import get_settings

_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_factories: dict[str, sessionmaker[Session]] = {}
_read_factories: dict[str, sessionmaker[Session]] = {}

READ_ONLY_OPTION = "layerprune_read_only"  # execution option of the read-only sessions' connections

SQLITE_BUSY_TIMEOUT_S = 30


def database_url(url: str | None = None) -> str:
    return url or get_settings().effective_database_url


def _pool_options() -> dict[str, Any]:
    settings = get_settings()
    return {"pool_size": settings.db_pool_size, "max_overflow": settings.db_max_overflow,
            "pool_timeout": settings.db_pool_timeout_seconds}


def pool_capacity(engine: Engine) -> int | None:
    """Connections ``engine``'s pool may have open at once (None: no limit, e.g. an in-memory SQLite)."""
    size = getattr(engine.pool, "size", None)
    overflow = getattr(engine.pool, "_max_overflow", None)
    if not callable(size) or overflow is None or overflow < 0:
        return None
    return int(size()) + int(overflow)


def _sqlite_engine(url: str) -> Engine:
    parsed = make_url(url)
    pool: dict[str, Any] = {}
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        pool = _pool_options()
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
                           **pool)

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
        # A read-only session's snapshot needs no lock: in WAL, readers never block each other
        # or the writer. Everything else takes the write lock up front (see the module docstring).
        if conn.get_execution_options().get(READ_ONLY_OPTION):
            conn.exec_driver_sql("BEGIN")
        else:
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
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args, **_pool_options())


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


def read_session_factory(url: str | None = None) -> sessionmaker[Session]:
    """Sessions for work that only reads (the API's GET and HEAD requests).

    Each statement runs in a transaction of its own, committed as soon as its rows are fetched, so
    the session holds a pooled connection only while a statement runs, in the thread that runs
    it: never while the route computes, while its answer waits for a thread to be validated and
    serialised, or while it is sent. On Postgres each statement runs in autocommit mode (the API
    reads at READ COMMITTED, where every statement takes a fresh snapshot anyway, so nothing
    changes but two round trips fewer); on SQLite the transaction begins without the write lock.

    Loaded objects stay readable (``expire_on_commit=False``). A session that does write (an
    object added, a flush, an UPDATE) falls back to one ordinary transaction from then on, which
    its commit or close ends.
    """
    url = database_url(url)
    engine = get_engine(url)
    with _lock:
        factory = _read_factories.get(url)
        if factory is None:
            options: dict[str, Any] = {READ_ONLY_OPTION: True}
            if engine.dialect.name == "postgresql":
                # One statement per transaction anyway: let the server wrap it, which saves the
                # BEGIN and COMMIT round trips.
                options["isolation_level"] = "AUTOCOMMIT"
            factory = sessionmaker(engine.execution_options(**options), expire_on_commit=False)
            event.listen(factory, "do_orm_execute", _commit_after_read)
            event.listen(factory, "after_flush", _mark_written)
            _read_factories[url] = factory
        return factory


def _mark_written(session: Session, _flush_context: Any) -> None:
    session.info["wrote"] = True


def _commit_after_read(state: ORMExecuteState) -> Result[Any] | None:
    session = state.session
    if not state.is_select or session.info.get("wrote") or session.new or session.dirty or session.deleted \
            or session.in_nested_transaction():
        if not state.is_select:
            session.info["wrote"] = True
        return None  # run as usual, inside the session's transaction
    frozen = state.invoke_statement().freeze()  # every row fetched (and ORM objects loaded)
    session.commit()  # nothing to flush: ends the read and hands the connection back to the pool
    return frozen()


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
        _read_factories.clear()


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
    _read_factories.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=reset_after_fork)
