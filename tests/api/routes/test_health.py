"""api.routes.health: ``/healthz`` answers whatever the dependencies do; ``/readyz`` names each
dependency's state and is 503 with a message naming what is not ready (embedded SQLite app; the
Postgres outage and the migrations-behind cases are in tests/api/test_operations.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.service_fixtures import service_env


def make_client(data_dir: Path, **settings: Any) -> TestClient:
    from layerprune.api.app import create_app
    from layerprune.settings import Settings

    return TestClient(create_app(Settings(data_dir=data_dir, key_secret="k" * 32, **settings), start_background=False))


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The process's own settings (the broker check reads them) on an embedded data dir."""
    data_dir = tmp_path_factory.mktemp("health")
    with service_env(data_dir=data_dir, database_url=None, broker_url=None, storage_url=None):
        yield data_dir


def test_ready_when_database_migrations_and_broker_are(embedded: Path) -> None:
    with make_client(embedded) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        r = c.get("/readyz")
        assert r.status_code == 200
        assert r.json() == {"status": "ok", "checks": {"database": "ok", "migrations": "ok", "broker": "ok"}}


def test_database_down_is_named_and_migrations_are_not_guessed(embedded: Path) -> None:
    # A "database file" that is a folder: SQLite cannot open it.
    (embedded / "a-folder.db").mkdir()
    url = f"sqlite:///{embedded / 'a-folder.db'}"
    with make_client(embedded, database_url=url, auto_migrate=False) as c:
        assert c.get("/healthz").status_code == 200  # liveness does not depend on the database
        r = c.get("/readyz")
    assert r.status_code == 503
    body = r.json()
    assert body["checks"]["database"] == "down: OperationalError"
    assert body["checks"]["migrations"] == "unknown: database down"
    assert body["checks"]["broker"] == "ok"
    assert body["error"]["code"] == "not_ready" and body["error"]["param"] is None
    assert body["error"]["message"] == ("not ready: database down: OperationalError; "
                                        "migrations unknown: database down")


def test_broker_down_is_named(embedded: Path) -> None:
    with make_client(embedded) as c, service_env(broker_url="redis://127.0.0.1:1/0"):
        r = c.get("/readyz")
    assert r.status_code == 503
    assert r.json()["checks"] == {"database": "ok", "migrations": "ok", "broker": "down"}
    assert r.json()["error"]["message"] == "not ready: broker down"
