"""Repository tests run on both backends: a migrated SQLite file and a fresh Postgres database."""

from __future__ import annotations

import pytest

from tests.service_fixtures import create_pg_database, drop_pg_database


@pytest.fixture(params=["sqlite", "postgres"])
def db(request, tmp_path):
    from layerprune.db.migrate import upgrade_to_head
    from layerprune.db.session import dispose_engines

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'r.db'}"
        upgrade_to_head(url)
        yield url
        dispose_engines()
        return
    try:
        url = create_pg_database("lp_repo")
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"no Postgres: {exc}")
    upgrade_to_head(url)
    yield url
    drop_pg_database(url)
