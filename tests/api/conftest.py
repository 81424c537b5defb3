"""API tests run through the real HTTP surface against a throwaway Postgres database."""

from tests.service_fixtures import *  # noqa: F403
