"""Fixtures for service tests: a throwaway Postgres database per test session, settings pointing
at it, the migrated schema, a configured FastAPI app and an HTTP client.

Use from a conftest or test module with ``from tests.service_fixtures import *  # noqa: F403``.
Each test that needs isolation takes ``new_tenant`` (a fresh tenant with its own API key), so
tests share one database without seeing each other's rows.

- ``pg_url``: ``postgresql+psycopg://…/lp_test_<random>`` created on localhost:5432 and dropped
  at the end (skips the tests when no Postgres answers).
- ``service_settings``: LAYERPRUNE_* environment for that database and a temporary data dir,
  applied to ``os.environ`` while a test module runs (module scope, so other modules' environments
  are untouched; the worker and dispatch read ``get_settings()``).
- ``migrated_db``: the schema at head.
- ``app`` / ``client``: ``create_app(start_background=False)`` and a ``TestClient`` on it.
- ``new_tenant``: ``(tenant, headers)`` with ``Authorization: Bearer …`` for a fresh tenant.
- ``service_env(**overrides)``: a context manager that sets LAYERPRUNE_* variables and resets
  the settings cache (and the dispatch Celery config), restoring both afterwards.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

PG_ADMIN_URL = os.environ.get("LAYERPRUNE_TEST_PG_ADMIN", "postgresql://postgres@localhost:5432/postgres")

TENANT_A_KEY = "test-key-a-" + "0" * 16
TENANT_B_KEY = "test-key-b-" + "1" * 16
# The API-key HMAC secret of test services (a server database needs one; db/keys.py).
TEST_KEY_SECRET = "test-key-secret-" + "2" * 32


def _pg_admin_connect():  # noqa: ANN202 - a psycopg connection
    import psycopg

    return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)


def create_pg_database(prefix: str = "lp_test") -> str:
    """Create an empty database with a unique name; returns its SQLAlchemy URL."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    with _pg_admin_connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{name}"


def drop_pg_database(url: str) -> None:
    from layerprune.db.session import dispose_engines

    dispose_engines()
    name = url.rsplit("/", 1)[1]
    with _pg_admin_connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _reset_caches() -> None:
    from layerprune.settings import reset_settings_cache

    reset_settings_cache()
    try:
        from layerprune.queue import celery_app

        celery_app.configure()
        # Celery's connection and producer pools live in kombu's process-wide pool groups, keyed
        # by broker URL and options; a pool closed for an earlier configuration would be handed
        # out again for an equal one ("Acquire on closed pool"). Start from empty groups.
        from kombu import pools

        pools.reset()
        celery_app.celery_app._pool = None
        celery_app.celery_app.amqp._producer_pool = None
    except Exception:  # noqa: BLE001 - celery is optional for pure API tests
        pass


def restore_service_env(saved: dict[str, str]) -> None:
    """After a test started service processes: drop pooled DB connections, put every
    ``LAYERPRUNE_*`` variable back as ``saved`` held it, and reload settings and the Celery app."""
    from layerprune.db.session import dispose_engines
    from layerprune.queue import celery_app
    from layerprune.settings import reset_settings_cache

    dispose_engines()
    for k in [k for k in os.environ if k.startswith("LAYERPRUNE_")]:
        del os.environ[k]
    os.environ.update(saved)
    reset_settings_cache()
    celery_app.configure()  # back to this process's own broker settings


@contextmanager
def service_env(**overrides: Any) -> Iterator[None]:
    """Set ``LAYERPRUNE_<NAME>`` variables (None removes one) and restore them afterwards."""
    saved: dict[str, str | None] = {}
    for name, value in overrides.items():
        key = "LAYERPRUNE_" + name.upper()
        saved[key] = os.environ.get(key)
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = str(value)
    _reset_caches()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _reset_caches()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    try:
        url = create_pg_database()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"no Postgres on localhost:5432 ({exc})")
    yield url
    drop_pg_database(url)


@pytest.fixture(scope="session")
def service_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lp-data")


@pytest.fixture(scope="module")
def service_settings(pg_url: str, service_data_dir: Path) -> Iterator[Any]:
    from layerprune.settings import get_settings

    with service_env(database_url=pg_url, data_dir=service_data_dir, broker_url=None,
                     api_keys=f"tenant-a:{TENANT_A_KEY},tenant-b:{TENANT_B_KEY}",
                     model_roots=str(service_data_dir / "models"), cuda_workers="false",
                     auto_migrate="1", log_json="1"):
        (service_data_dir / "models").mkdir(exist_ok=True)
        yield get_settings()


@pytest.fixture(scope="module")
def migrated_db(service_settings: Any) -> str:
    from layerprune.db.migrate import upgrade_to_head

    upgrade_to_head(service_settings.effective_database_url)
    return service_settings.effective_database_url


@pytest.fixture(scope="module")
def app(service_settings: Any, migrated_db: str) -> Any:
    from layerprune.api.app import create_app

    return create_app(service_settings, start_background=False)


@pytest.fixture(scope="module")
def client(app: Any) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    with TestClient(app) as c:
        yield c


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def new_tenant(migrated_db: str) -> tuple[str, dict[str, str]]:
    """A fresh tenant and the headers of its new API key."""
    from layerprune.db.keys import add_key
    from layerprune.db.session import session_scope

    tenant = "t-" + secrets.token_hex(4)
    with session_scope(migrated_db) as session:
        key = add_key(session, tenant, name="test")
    return tenant, auth(key)
