"""Hundreds of concurrent pollers on a live server all get answers (issue 11: the API deadlocked).

Sync routes wait for worker threads while they hold database connections; when the pool was
smaller than the thread limit, threads waited for connections held by requests waiting for
threads, and every request of 200 concurrent pollers timed out with a 503. Not timed: these
tests only assert that every request is answered 200, on Postgres and on the embedded SQLite.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.api.live_server import live_server
from tests.service_fixtures import *  # noqa: F403

POLLERS = 200
ROUNDS = 2  # each poller sends its next request as soon as the last one is answered
# Longer than the test: a connection the server closes for idleness just as the client reuses it
# fails that request (the usual keep-alive race, which clients retry); not what is tested here.
KEEP_ALIVE = {"keep_alive_timeout_seconds": "60"}


async def _poll_all(url: str, paths: list[str], headers: dict[str, str]) -> list[int | str]:
    limits = httpx.Limits(max_connections=POLLERS, max_keepalive_connections=POLLERS)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=25) as client:
        async def poller(i: int) -> list[int | str]:
            out: list[int | str] = []
            for r in range(ROUNDS):
                try:
                    out.append((await client.get(paths[(i + r) % len(paths)])).status_code)
                except httpx.HTTPError as exc:  # a timeout is the deadlock's symptom
                    out.append(type(exc).__name__)
            return out

        results = await asyncio.gather(*(poller(i) for i in range(POLLERS)))
    return [s for r in results for s in r]


def _check(server) -> None:  # noqa: ANN001
    job = server.create_job()
    paths = [f"/v1/jobs/{job['id']}", "/v1/jobs?limit=50", f"/v1/jobs/{job['id']}/events"]
    statuses = asyncio.run(_poll_all(server.url, paths, server.headers))
    assert len(statuses) == POLLERS * ROUNDS
    assert statuses == [200] * len(statuses), {s: statuses.count(s) for s in set(statuses)}


def test_200_concurrent_pollers_on_postgres(pg_url, tmp_path):
    with live_server(tmp_path / "pg", pg_url, **KEEP_ALIVE) as server:
        _check(server)


def test_200_concurrent_pollers_on_sqlite(tmp_path):
    with live_server(tmp_path / "sqlite", **KEEP_ALIVE) as server:
        _check(server)


def test_a_pool_smaller_than_the_threads_is_refused_at_start(tmp_path):
    """The deadlock's precondition is a configuration error, named at start-up, not a stall under load."""
    from layerprune.api.deps import check_pool
    from layerprune.settings import Settings

    settings = Settings(data_dir=tmp_path, api_threads=40, db_pool_size=10, db_max_overflow=20)
    with pytest.raises(ValueError, match="LAYERPRUNE_API_THREADS"):
        check_pool(30, settings)
    assert check_pool(60, Settings(data_dir=tmp_path, api_threads=40)) == 18


def test_the_thread_limit_comes_from_the_settings(service_settings, migrated_db):
    import anyio
    from fastapi.testclient import TestClient

    from layerprune.api.app import create_app

    app = create_app(service_settings.model_copy(update={"api_threads": 7}), start_background=False)
    with TestClient(app) as client:
        tokens = client.portal.call(lambda: anyio.to_thread.current_default_thread_limiter().total_tokens)
    assert tokens == 7
