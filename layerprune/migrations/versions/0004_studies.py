"""Studies: a ``studies`` table, ``jobs.study_id`` and ``webhook_deliveries.study_id``.

A study is a set of ordinary jobs (one per recipe, plus the baseline evaluation) created by one
``POST /v1/studies``; its jobs point at it. A study's webhook deliveries are rows of
``webhook_deliveries`` with ``study_id`` set (``job_id`` names the study's baseline job, whose
events record the attempts).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from layerprune.db.models import JSONType, UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("seq", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("spec", JSONType, nullable=False),
        sa.Column("metadata", JSONType, nullable=False),
        sa.Column("baseline_job_id", sa.String(64), nullable=True),
        sa.Column("plan", JSONType, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("cancel_requested_at", UTCDateTime(), nullable=True),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.UniqueConstraint("seq", name="uq_studies_seq"),
    )
    op.create_index("ix_studies_tenant", "studies", ["tenant"])
    op.create_index("ix_studies_tenant_seq", "studies", ["tenant", "seq"])
    op.create_index("ix_studies_unfinished", "studies", ["finished_at"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("study_id", sa.String(64), nullable=True))
        batch.create_foreign_key("fk_jobs_study_id", "studies", ["study_id"], ["id"], ondelete="SET NULL")
        batch.create_index("ix_jobs_study_id", ["study_id"])
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.add_column(sa.Column("study_id", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.drop_column("study_id")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_study_id")
        batch.drop_constraint("fk_jobs_study_id", type_="foreignkey")
        batch.drop_column("study_id")
    op.drop_table("studies")
