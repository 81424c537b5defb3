"""Change feeds: what tells the :class:`~layerprune.api.job_cache.JobCache` that a job changed.

A job changes in other processes (the worker, another API replica), so the API cannot learn of
it from its own writes; each database offers a cheap signal instead:

- Postgres: migration 0003's trigger on ``jobs`` sends ``NOTIFY layerprune_jobs, '<job id>'``
  with each insert, update and delete, delivered when the transaction commits.
  :class:`PostgresChanges` listens on a connection of its own, in a task on the event loop (so a
  notification is handled as soon as the loop sees it, not when a thread gets the GIL), and drops
  that job's entry. It is ready only once ``LISTEN`` ran on a live connection and the trigger was
  found in the database (a database not yet migrated to 0003 sends nothing); when the connection
  drops, the cache is emptied and stays unused until the listener is back. A notification arrives
  within about a millisecond of the commit on one host; that is the whole window in which a GET
  can miss a commit made elsewhere (half-open connections are found by TCP keep-alives).
- SQLite: ``PRAGMA data_version`` on a connection of its own (which never writes) changes whenever
  any other connection, in any process, commits; reading it costs ~5 µs and never waits for a
  lock. :class:`SqliteChanges` reads it on every GET and empties the cache when it moved. Any
  commit empties it (SQLite has no per-row signal), which under a running worker still leaves
  most polls answered from memory.
- Anything else (an in-memory SQLite, ``LAYERPRUNE_JOB_CACHE=false``): :class:`NoChanges`, never
  ready, so every GET reads the database.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from layerprune.api.job_cache import JobCache

log = logging.getLogger(__name__)

CHANNEL = "layerprune_jobs"  # the trigger of layerprune/migrations/versions/0003_jobs_notify.py notifies here
TRIGGER = "jobs_notify"
APPLICATION_NAME = "layerprune-job-changes"  # how the listening connection shows in pg_stat_activity
RETRY_MIN_S = 0.5
RETRY_MAX_S = 10.0
IDLE_ROUND_S = 1.0  # a round trip at least this often on the listening connection, requests or not
ROUND_TIMEOUT_S = 2.0  # a round trip slower than this: the listener counts as down
# A listener whose peer vanished without closing (a network partition) is found within ~30 s.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 4}


class NoChanges:
    """No change signal: the cache is never used."""

    async def caught_up(self, cache: JobCache) -> bool:
        return False

    def up(self) -> bool:
        return False

    def start(self, cache: JobCache) -> None:
        pass

    async def stop(self) -> None:
        pass


class SqliteChanges:
    """``PRAGMA data_version`` of the database file, read on each GET (see the module docstring)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._version: int | None = None

    async def caught_up(self, cache: JobCache) -> bool:
        # The counter is in the WAL index, updated before a commit returns: reading it here sees
        # every commit made before this call. No await: this runs on the event loop in ~5 µs.
        try:
            if self._conn is None:
                # timeout=0: never wait on the event loop; a busy database means "not now" this once.
                self._conn = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False)
            version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error:
            self._close()
            cache.changed_all()
            return False
        if version != self._version:
            self._version = version
            cache.changed_all()
        return True

    def up(self) -> bool:
        return self._conn is not None

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        self._version = None  # a new connection's counter does not continue the old one's

    def start(self, cache: JobCache) -> None:
        pass

    async def stop(self) -> None:
        self._close()


class PostgresChanges:
    """``LISTEN layerprune_jobs`` on a connection of its own, driven by a task on the event loop.

    A notification is sent by the listening server process some time after the commit returned
    to the committer (it is signalled, then scheduled), so waiting for it could miss a commit made
    just before a GET. Instead each cache hit waits for a round trip on the listening connection
    that began after the request arrived: Postgres sends every notification it has pending
    before it answers, so when the answer is in, every job changed by a commit made before the
    request has been dropped. Concurrent requests share a round trip (the next one to start), so
    under load this is one ``SELECT 1`` per batch of requests, not per request. Between requests a
    round trip every ``IDLE_ROUND_S`` keeps the notifications drained and the connection checked.
    """

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self.listening = False
        self.backend_pid: int | None = None  # of the listening connection (tests end it to test the fallback)
        self._task: asyncio.Task[None] | None = None
        self._next: asyncio.Future[bool] | None = None  # the waiters of the next round trip
        self._wake: asyncio.Event | None = None
        self._listened = False

    async def caught_up(self, cache: JobCache) -> bool:
        if not self.listening or self._wake is None:
            return False
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
            self._wake.set()
        # Shielded: a client that goes away must not cancel the round trip others wait for.
        return await asyncio.shield(self._next)

    def up(self) -> bool:
        return self.listening

    def start(self, cache: JobCache) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(cache), name="job-changes")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
                pass
            self._task = None

    async def _run(self, cache: JobCache) -> None:
        delay = RETRY_MIN_S
        while True:
            self._listened = False
            try:
                await self._listen(cache)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure: serve from the database, retry
                if self._listened:
                    delay = RETRY_MIN_S  # it worked until now: try again soon
                log.warning("job cache off: job change listener failed (%s: %s); retrying in %g s",
                            type(exc).__name__, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    async def _listen(self, cache: JobCache) -> None:
        assert self._wake is not None
        conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True, connect_timeout=5,
                                                     application_name=APPLICATION_NAME, **KEEPALIVES)
        try:
            # Called by psycopg as it reads each notification, during our own round trips.
            conn.add_notify_handler(lambda note: cache.changed(note.payload))
            cur = await conn.execute(
                "SELECT count(*) FROM pg_trigger WHERE tgname = %s AND tgrelid = to_regclass('jobs')", (TRIGGER,))
            row = await cur.fetchone()
            if not row or not row[0]:
                raise RuntimeError(f"trigger {TRIGGER} on jobs not found (database not migrated to 0003?)")
            await conn.execute(f"LISTEN {CHANNEL}")
            # From here every commit to jobs reaches us; reads that began before are not kept.
            cache.changed_all()
            self.backend_pid = conn.info.backend_pid
            self.listening = self._listened = True
            log.info("job cache on: listening for job changes")
            while True:
                if self._next is None:
                    try:
                        await asyncio.wait_for(self._wake.wait(), IDLE_ROUND_S)
                    except TimeoutError:
                        pass
                self._wake.clear()
                waiters, self._next = self._next, None
                try:
                    await asyncio.wait_for(conn.execute("SELECT 1"), ROUND_TIMEOUT_S)
                except BaseException:
                    if waiters is not None:
                        waiters.set_result(False)
                    raise
                if waiters is not None:
                    waiters.set_result(True)
        finally:
            if self.listening:
                self.listening = False
                cache.changed_all()
            if self._next is not None:  # requests that arrived as it went down read the database
                self._next.set_result(False)
                self._next = None
            self.backend_pid = None
            await _close_quietly(conn)


async def _close_quietly(conn: Any) -> None:
    try:
        await conn.close()
    except Exception:  # noqa: BLE001 - the connection is already gone
        pass


def feed_for(database_url: str, enabled: bool) -> NoChanges | SqliteChanges | PostgresChanges:
    """The change feed for the app's database (:class:`NoChanges` when caching is off or impossible)."""
    if not enabled:
        return NoChanges()
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        return PostgresChanges(url.set(drivername="postgresql").render_as_string(hide_password=False))
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        if not database or database == ":memory:" or database.startswith("file:") or url.query.get("mode"):
            return NoChanges()  # in-memory (or URI-named) databases: no file of their own to watch
        return SqliteChanges(str(Path(database).expanduser()))
    return NoChanges()
