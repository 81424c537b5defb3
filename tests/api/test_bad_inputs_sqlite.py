"""The metadata rules of ``test_bad_inputs`` on the embedded default (SQLite): the same 422s, never a
503 for a client's input, and the same jobs found as on Postgres for any key."""

from __future__ import annotations

import pytest

from tests.api.helpers import PRUNE
from tests.api.test_bad_inputs import check_metadata_rules
from tests.service_fixtures import service_env


@pytest.fixture(scope="module")
def sqlite_client(tmp_path_factory):
    from fastapi.testclient import TestClient

    from layerprune.api.app import create_app
    from layerprune.db.session import dispose_engines
    from layerprune.settings import get_settings

    data = tmp_path_factory.mktemp("lp-sqlite-inputs")
    with service_env(data_dir=data, database_url=None, broker_url=None, storage_dir=None,
                     api_keys="solo:solo-key", auto_migrate="1", cuda_workers="false"):
        settings = get_settings()
        assert settings.effective_database_url.startswith("sqlite")
        with TestClient(create_app(settings, start_background=False)) as c:
            yield c
    dispose_engines()


H = {"Authorization": "Bearer solo-key"}


def test_metadata_rules_on_sqlite(sqlite_client):
    check_metadata_rules(sqlite_client, H)


def test_a_malformed_statement_is_not_an_outage(sqlite_client):
    # Only a database that cannot be reached is a 503 (retry); SQLite's other OperationalErrors are not.
    from sqlalchemy import exc as sa_exc

    from layerprune.api.errors import is_database_down

    def operational(message: str) -> sa_exc.OperationalError:
        import sqlite3

        return sa_exc.OperationalError("SELECT 1", {}, sqlite3.OperationalError(message))

    assert is_database_down(operational("database is locked"))
    assert is_database_down(operational("unable to open database file"))
    assert not is_database_down(operational('bad JSON path: \'$."a\x00"\''))
    assert not is_database_down(operational("no such table: jobs"))
    # Postgres: by SQLSTATE class; an error without one never reached a server.
    import psycopg
    from psycopg import errors as pg

    def pg_error(exc: Exception) -> sa_exc.OperationalError:
        return sa_exc.OperationalError("SELECT 1", {}, exc)

    for down in (psycopg.OperationalError("connection failed"), pg.AdminShutdown(), pg.TooManyConnections(),
                 pg.QueryCanceled(), pg.CannotConnectNow(), pg.IoError()):
        assert is_database_down(pg_error(down)), down
    for not_down in (pg.ProgramLimitExceeded(), pg.StatementTooComplex()):
        assert not is_database_down(pg_error(not_down)), not_down
    r = sqlite_client.post("/v1/jobs", json={**PRUNE, "metadata": {"a": "b"}}, headers=H)
    assert r.status_code == 201, r.text


def test_impossible_ids_are_404_on_sqlite(sqlite_client):
    from tests.api.test_bad_inputs import check_impossible_ids

    check_impossible_ids(sqlite_client, H)


def test_download_tokens_are_checked_before_the_database_on_sqlite(sqlite_client):
    from layerprune.db.models import ApiKey
    from tests.api.test_bad_inputs import check_download_tokens

    with sqlite_client.app.state.session_factory() as s:
        key = s.query(ApiKey).filter_by(tenant="solo").one()
        key_id, key_hash = key.id, key.key_hash
    check_download_tokens(sqlite_client, key_id, key_hash)
