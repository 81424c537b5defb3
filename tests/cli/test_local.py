"""cli.local in-process: ``migrate``, ``keys create`` and the start of ``serve`` against real
databases (an embedded SQLite file; a fresh Postgres database reached with a password in its URL),
configured through ``LAYERPRUNE_*`` as the service is. (The live ``serve`` and ``worker``
processes: tests/cli/test_cli_live.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from layerprune.cli import EXIT_FAILED, EXIT_OK, main
from layerprune.cli.local import _redact
from tests.service_fixtures import create_pg_database, drop_pg_database, service_env


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Path]:
    with service_env(data_dir=tmp_path, database_url=None, broker_url=None):
        yield tmp_path


@pytest.fixture
def pg_with_password() -> Iterator[str]:
    try:
        url = create_pg_database("lp_cli")
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"no Postgres: {exc}")
    # Local connections are trusted: the password is ignored, but it is in the URL to be hidden.
    yield url.replace("://postgres@", "://postgres:hunter2-secret@", 1)
    drop_pg_database(url)


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql+psycopg://lp:s3cret@db:5432/lp", "postgresql+psycopg://lp:***@db:5432/lp"),
    ("postgresql://lp@db/lp", "postgresql://lp:***@db/lp"),
    ("sqlite:////var/lib/lp/layerprune.db", "sqlite:////var/lib/lp/layerprune.db"),
    # An unencoded "@" in the password: the credentials end at the last "@" before the path.
    ("postgresql://user:p@ss@db/lp", "postgresql://user:***@db/lp"),
    ("postgresql://db/lp?options=a@b", "postgresql://db/lp?options=a@b"),
])
def test_redact_hides_the_password(url: str, shown: str) -> None:
    assert _redact(url) == shown
    assert "s3cret" not in _redact(url) and "ss@" not in _redact(url)


def test_migrate_brings_the_embedded_database_to_head(embedded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from layerprune.db.migrate import current_revision, head_revision

    assert main(["migrate"]) == EXIT_OK
    url = f"sqlite:///{embedded / 'layerprune.db'}"
    assert current_revision(url) == head_revision()
    assert capsys.readouterr().out == f"database at revision {head_revision()} ({url})\n"
    assert main(["migrate"]) == EXIT_OK  # again: nothing to do, same answer


@pytest.mark.service
def test_migrate_never_prints_the_database_password(pg_with_password: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from layerprune.db.migrate import current_revision, head_revision

    with service_env(database_url=pg_with_password):
        assert main(["migrate"]) == EXIT_OK
    out = capsys.readouterr()
    assert "hunter2" not in out.out + out.err
    assert "postgres:***@" in out.out
    assert current_revision(pg_with_password) == head_revision()


def test_keys_create_prints_a_working_key_once(embedded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from layerprune.db.keys import tenant_for_key
    from layerprune.db.session import session_scope

    assert main(["keys", "create", "acme", "--name", "ci"]) == EXIT_OK
    out = capsys.readouterr()
    key = out.out.strip()
    assert "\n" not in key and len(key) >= 20
    assert "tenant 'acme'" in out.err and "not shown again" in out.err and key not in out.err
    with session_scope(f"sqlite:///{embedded / 'layerprune.db'}") as s:
        assert tenant_for_key(s, key) == "acme"
        assert tenant_for_key(s, key + "x") is None


@pytest.mark.service
def test_a_missing_key_secret_is_one_line_before_anything_starts(pg_with_password: str,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from layerprune.db.migrate import current_revision

    with service_env(database_url=pg_with_password, key_secret=None):
        assert main(["keys", "create", "acme"]) == EXIT_FAILED
        assert main(["serve", "--port", "1"]) == EXIT_FAILED
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: LAYERPRUNE_KEY_SECRET is not set") for line in err)
    assert current_revision(pg_with_password) is None  # refused before migrating anything
