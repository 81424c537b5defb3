"""Postgres: every change to a job row sends ``NOTIFY layerprune_jobs, '<job id>'``.

The API keeps each job's JSON in memory while nothing changed it (api/job_cache.py); the worker
and other API processes change jobs, so the API listens on this channel (api/job_changes.py) and
drops a job's entry when its row changes. A notification is delivered when the transaction
commits (never for one rolled back), once per job id per transaction. The API serves from memory
only after it found this trigger, so a database without it is simply read every time.

SQLite has no NOTIFY; the API watches ``PRAGMA data_version`` there instead: nothing to migrate.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# The channel and trigger names are read by layerprune/api/job_changes.py (CHANNEL, TRIGGER).
_FUNCTION = """
CREATE OR REPLACE FUNCTION layerprune_jobs_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('layerprune_jobs', CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql
"""
_TRIGGER = """
CREATE TRIGGER jobs_notify AFTER INSERT OR UPDATE OR DELETE ON jobs
FOR EACH ROW EXECUTE FUNCTION layerprune_jobs_notify()
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(_FUNCTION)
    op.execute(_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS jobs_notify ON jobs")
    op.execute("DROP FUNCTION IF EXISTS layerprune_jobs_notify()")
