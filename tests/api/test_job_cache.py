"""The job cache behind ``GET /v1/jobs/{id}`` (api/job_cache.py, job_changes.py, job_poll.py; issue 11).

Against live servers on both backends: after every state change of a real job, made by another
process (this one, as the worker would) or by the API itself, the very next GET shows it, and the
bodies served from memory equal, byte for byte, what FastAPI's response-model serialisation makes
of a fresh read of the row (the route as it was before the cache). On Postgres the cache is shown
to be in use (a write that bypasses the trigger stays invisible), and with its listener killed
and unable to come back the API reads the database.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.api.live_server import REPO, live_server
from tests.service_fixtures import *  # noqa: F403

APPLICATION_NAME = "layerprune-job-changes"


@pytest.fixture
def own_pg() -> Any:
    """A database of this test's own: the tests below drop the trigger and end connections in it."""
    from tests.service_fixtures import create_pg_database, drop_pg_database

    try:
        url = create_pg_database("lp_test_cache")
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"no Postgres on localhost:5432 ({exc})")
    yield url
    drop_pg_database(url)


# ------------------------------------------------------------------ the cache alone


class _Feed:
    def __init__(self) -> None:
        self.working = True

    async def caught_up(self, cache: Any) -> bool:
        return self.working

    def up(self) -> bool:
        return self.working


def test_a_read_that_raced_a_change_is_answered_but_not_kept():
    import asyncio

    from layerprune.api.job_cache import JobCache

    async def scenario() -> None:
        feed = _Feed()
        cache = JobCache(feed)
        body, generation = await cache.lookup("t", "job_1")
        assert body is None
        cache.changed("job_2")  # any change seen while job_1 was read
        cache.store("t", "job_1", b"old", generation)
        assert (await cache.lookup("t", "job_1"))[0] is None
        _, generation = await cache.lookup("t", "job_1")
        cache.store("t", "job_1", b"fresh", generation)
        assert (await cache.lookup("t", "job_1"))[0] == b"fresh"
        assert (await cache.lookup("other-tenant", "job_1"))[0] is None  # read from the database: a 404
        cache.changed("job_1")
        assert (await cache.lookup("t", "job_1"))[0] is None
        _, generation = await cache.lookup("t", "job_1")
        feed.working = False
        cache.store("t", "job_1", b"x", generation)
        feed.working = True
        assert (await cache.lookup("t", "job_1"))[0] is None
        feed.working = False
        assert await cache.lookup("t", "job_1") == (None, None)

    asyncio.run(scenario())


# ------------------------------------------------------------------ live servers


def _sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'layerprune.db'}"


def _reference(url: str, job_id: str) -> bytes:
    """What the route answered before the cache: FastAPI's response_model serialisation of a fresh read."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from layerprune.api.schemas import JobPublic
    from layerprune.db.models import Job
    from layerprune.db.session import session_scope

    app = FastAPI()

    @app.get("/job", response_model=JobPublic)
    def job_route() -> JobPublic:
        with session_scope(url) as session:
            return JobPublic.from_row(session.get(Job, job_id))

    return TestClient(app).get("/job").content


def _update(url: str, job_id: str, **values: Any) -> None:
    """A worker-style UPDATE of the job row, committed in this (another) process."""
    from layerprune.db.models import Job
    from layerprune.db.session import session_scope

    with session_scope(url) as session:
        job = session.get(Job, job_id)
        for name, value in values.items():
            setattr(job, name, value)


def _get(server: Any, client: httpx.Client, job_id: str) -> httpx.Response:
    r = client.get(f"/v1/jobs/{job_id}")
    assert r.status_code == 200, r.text
    return r


def _state_changes() -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    return [
        {"status": "running", "stage": "prune", "attempts": 1, "started_at": now, "heartbeat_at": now,
         "worker_id": "w-test"},
        {"progress": 0.25},
        {"stage": "finetune", "progress": 0.5, "heartbeat_at": now},
        {"progress": 0.875, "stage": "evaluate"},
        {"status": "succeeded", "stage": None, "progress": 1.0, "finished_at": now,
         "result": {"layers_removed": [9, 10, 11], "ppl": 12.5, "note": "ünïcode ✓"}},
    ]


def _check_every_state_change(server: Any, url: str) -> None:
    job = server.create_job()
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=30) as client:
        first = _get(server, client, job["id"])
        assert first.content == _reference(url, job["id"])
        for change in _state_changes():
            _update(url, job["id"], **change)
            fresh = _get(server, client, job["id"])  # the very next GET after the commit
            body = fresh.json()
            for name in ("status", "stage", "progress"):
                if name in change:
                    assert body[name] == change[name], (name, body)
            reference = _reference(url, job["id"])
            assert fresh.content == reference
            for _ in range(3):  # from memory now (where the backend has a change feed)
                again = _get(server, client, job["id"])
                assert again.content == reference
                assert again.headers["content-type"] == fresh.headers["content-type"] == "application/json"
                assert again.headers["content-length"] == str(len(reference))
        # A change made by the API itself: a queued job cancelled.
        other = server.create_job()
        assert _get(server, client, other["id"]).json()["status"] == "queued"
        assert client.post(f"/v1/jobs/{other['id']}/cancel").status_code == 200
        cancelled = _get(server, client, other["id"])
        assert cancelled.json()["status"] == "cancelled"
        assert cancelled.content == _get(server, client, other["id"]).content == _reference(url, other["id"])
        # Errors still come from the route.
        assert client.get("/v1/jobs/job_doesnotexist0000000000").status_code == 404
        assert client.get(f"/v1/jobs/{job['id']}", headers={"Authorization": "Bearer wrong-key-x"}).status_code == 401


def test_every_state_change_is_seen_at_once_and_cached_bodies_are_exact_on_postgres(own_pg, tmp_path):
    with live_server(tmp_path / "pg", own_pg) as server:
        _wait_listening(own_pg)
        _check_every_state_change(server, own_pg)


def test_every_state_change_is_seen_at_once_and_cached_bodies_are_exact_on_sqlite(tmp_path):
    with live_server(tmp_path / "sqlite") as server:
        _check_every_state_change(server, _sqlite_url(tmp_path / "sqlite"))


# ------------------------------------------------------------------ Postgres: listener in use, and lost


def _admin(url: str) -> psycopg.Connection:
    from sqlalchemy.engine import make_url

    return psycopg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False),
                           autocommit=True)


def _listener_pid(url: str) -> int | None:
    with _admin(url) as conn:
        row = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s AND datname = "
                           "current_database()", (APPLICATION_NAME,)).fetchone()
    return row[0] if row else None


def _wait_listening(url: str, seconds: float = 30) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pid = _listener_pid(url)
        if pid is not None:
            time.sleep(0.2)  # LISTEN runs right after it connects
            return pid
        time.sleep(0.1)
    raise AssertionError("the job change listener did not connect")


def _update_without_trigger(url: str, job_id: str, progress: float) -> None:
    """A write the listener cannot see (triggers off for this session): only the cache can hide it."""
    with _admin(url) as conn, conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute("UPDATE jobs SET progress = %s WHERE id = %s", (progress, job_id))


def _migration_sql() -> tuple[str, str]:
    paths = [p for p in REPO.rglob("0003_jobs_notify.py") if ".venv" not in p.parts]
    assert paths, "migration 0003_jobs_notify.py not found"
    namespace: dict[str, Any] = {}
    exec(compile(paths[0].read_text(), str(paths[0]), "exec"), namespace)  # noqa: S102 - our own file
    return namespace["_FUNCTION"], namespace["_TRIGGER"]


def test_postgres_serves_from_memory_and_reads_the_database_while_the_listener_is_lost(own_pg, tmp_path):
    with live_server(tmp_path / "pg", own_pg) as server, \
            httpx.Client(base_url=server.url, headers=server.headers, timeout=30) as client:
        pid = _wait_listening(own_pg)
        job_id = server.create_job()["id"]
        assert _get(server, client, job_id).json()["progress"] == 0.0
        _update_without_trigger(own_pg, job_id, 0.5)
        assert _get(server, client, job_id).json()["progress"] == 0.0  # from memory: the cache is used
        _update(own_pg, job_id, progress=0.75)  # the trigger notifies
        assert _get(server, client, job_id).json()["progress"] == 0.75

        # The listener is lost and cannot come back (no trigger): every GET reads the database.
        try:
            with _admin(own_pg) as conn:
                conn.execute("DROP TRIGGER jobs_notify ON jobs")
                assert conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
            deadline = time.monotonic() + 10
            while _listener_pid(own_pg) == pid:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            for progress in (0.8, 0.9):
                _update_without_trigger(own_pg, job_id, progress)
                assert _get(server, client, job_id).json()["progress"] == progress
                assert _get(server, client, job_id).json()["progress"] == progress

        finally:
            _restore_trigger(own_pg)
        # The trigger back: the listener returns (within its back-off) and the cache is used again.
        deadline = time.monotonic() + 30
        while True:
            _get(server, client, job_id)  # warm it (once the listener is back)
            _update_without_trigger(own_pg, job_id, 0.95)
            if _get(server, client, job_id).json()["progress"] == 0.9:
                break  # served from memory again
            _update_without_trigger(own_pg, job_id, 0.9)
            assert time.monotonic() < deadline, "the listener did not come back"
            time.sleep(0.5)
        _update(own_pg, job_id, progress=1.0)
        assert _get(server, client, job_id).json()["progress"] == 1.0


def test_without_the_trigger_the_cache_is_never_used(own_pg, tmp_path):
    """A database not (yet) at migration 0003 sends no notifications: nothing may be served from memory."""
    with live_server(tmp_path / "pg", own_pg) as server, \
            httpx.Client(base_url=server.url, headers=server.headers, timeout=30) as client:
        pid = _wait_listening(own_pg)
        with _admin(own_pg) as conn:
            conn.execute("DROP TRIGGER jobs_notify ON jobs")
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        try:
            job_id = server.create_job()["id"]
            time.sleep(1.5)  # the listener tried again, found no trigger, and stays off
            for progress in (0.1, 0.2, 0.3):
                _get(server, client, job_id)
                _update(own_pg, job_id, progress=progress)
                assert _get(server, client, job_id).json()["progress"] == progress
        finally:
            _restore_trigger(own_pg)


def _restore_trigger(url: str) -> None:
    function, trigger = _migration_sql()
    with _admin(url) as conn:
        conn.execute("DROP TRIGGER IF EXISTS jobs_notify ON jobs")
        conn.execute(function)
        conn.execute(trigger)


def test_the_cache_can_be_switched_off(tmp_path):
    with live_server(tmp_path / "sqlite", job_cache="false") as server, \
            httpx.Client(base_url=server.url, headers=server.headers, timeout=30) as client:
        job_id = server.create_job()["id"]
        url = _sqlite_url(tmp_path / "sqlite")
        for progress in (0.1, 0.2):
            _get(server, client, job_id)
            _update(url, job_id, progress=progress)
            r = _get(server, client, job_id)
            assert r.json()["progress"] == progress and r.content == _reference(url, job_id)


def test_hits_are_logged_and_counted_as_the_route_would(service_settings, migrated_db, new_tenant, caplog):
    """A hit is answered before routing, yet its request log line names the tenant and its metrics
    label is the route's, as for a miss."""
    from fastapi.testclient import TestClient

    from layerprune.api.app import create_app

    tenant, h = new_tenant
    app = create_app(service_settings, start_background=False)
    with TestClient(app) as client:
        deadline = time.monotonic() + 20
        while not app.state.job_cache.feed.up():
            assert time.monotonic() < deadline, "the job change listener did not start"
            time.sleep(0.05)
        job_id = client.post("/v1/jobs", json={"prune": {"metric": "reverse_order", "ratio": 0.25}},
                             headers=h).json()["id"]
        before = _get_count(client.get("/metrics").text)
        caplog.set_level("INFO", logger="layerprune.api")
        bodies = {client.get(f"/v1/jobs/{job_id}", headers=h).content for _ in range(4)}
        assert len(bodies) == 1 and len(app.state.job_cache) == 1  # one read, then hits
        lines = [r for r in caplog.records if r.getMessage() == "request" and getattr(r, "path", "") ==
                 f"/v1/jobs/{job_id}"]
        assert len(lines) == 4 and {getattr(r, "tenant", None) for r in lines} == {tenant}
        assert _get_count(client.get("/metrics").text) == before + 4  # the counters are per process


def _get_count(metrics: str) -> float:
    prefix = 'layerprune_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="200"} '
    return sum(float(line[len(prefix):]) for line in metrics.splitlines() if line.startswith(prefix))
