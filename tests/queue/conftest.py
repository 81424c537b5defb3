"""The queue tests use the worker tests' migrated databases (SQLite file, fresh Postgres) and Redis."""

from tests.worker.conftest import db_url, private_redis, sessions  # noqa: F401 - fixtures
