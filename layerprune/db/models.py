"""The service's tables (SQLAlchemy 2, ``Mapped[...]``); the same schema on Postgres and SQLite.

The database is the source of truth of every job. ``jobs.status`` is a small state machine whose
statuses and allowed moves are defined in ``layerprune.queue.status`` (a dependency-free table
every layer reads) and made by ``layerprune.queue.transitions``, each with a ``job_events`` row
in the same transaction.
``seq`` columns give a strict insertion order for newest-first pagination and event cursors: an
identity column on Postgres, ``MAX(seq)+1`` inside the INSERT on SQLite (whose writers are
serialised, so the value is unique).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    event,
    func,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from layerprune.db.ids import ARTIFACT, EVENT, FILE, JOB, KEY, WEBHOOK_DELIVERY, new_id
from layerprune.queue.status import TERMINAL_STATUSES, JobStatus

STAGES = ("prune", "finetune", "evaluate", "export")
EVENT_TYPES = ("created", "dispatched", "stage", "progress", "warning", "log", "state", "artifact",
               "webhook", "retry", "cancel_requested")
FILE_PURPOSES = ("finetune", "evaluate", "calibration")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    SQLite has no time zones: values are stored as naive UTC and come back tagged UTC, so code can
    compare them with ``datetime.now(UTC)`` whatever the backend.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSONType, datetime: UTCDateTime}


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id(KEY))
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    key_hash: Mapped[str] = mapped_column(String(64))  # hex digest (see db/keys.py); never the key itself
    # "hmac-sha256" (keyed) or "sha256" (rows from before migration 0002, upgraded on first use)
    hash_scheme: Mapped[str] = mapped_column(String(16), default="hmac-sha256", server_default="sha256")
    name: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id(JOB))
    seq: Mapped[int] = mapped_column(BigInteger, Identity())
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value, index=True)
    stage: Mapped[str | None] = mapped_column(String(16))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    spec: Mapped[dict[str, Any]] = mapped_column()
    result: Mapped[dict[str, Any] | None] = mapped_column()
    error: Mapped[dict[str, Any] | None] = mapped_column()
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    queue: Mapped[str] = mapped_column(String(16), default="gpu")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    cancel_requested_at: Mapped[datetime | None] = mapped_column()
    worker_id: Mapped[str | None] = mapped_column(String(256))
    lease_expires_at: Mapped[datetime | None] = mapped_column()
    heartbeat_at: Mapped[datetime | None] = mapped_column()
    dispatched_at: Mapped[datetime | None] = mapped_column()  # NULL: not yet sent to the broker (outbox)
    dispatch_count: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (
        UniqueConstraint("seq", name="uq_jobs_seq"),
        Index("ix_jobs_tenant_seq", "tenant", "seq"),
        Index("ix_jobs_status_dispatched", "status", "dispatched_at"),
    )

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class JobEvent(Base):
    __tablename__ = "job_events"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id(EVENT))
    seq: Mapped[int] = mapped_column(BigInteger, Identity())
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    level: Mapped[str] = mapped_column(String(16), default="info")
    type: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)

    __table_args__ = (
        UniqueConstraint("seq", name="uq_job_events_seq"),
        Index("ix_job_events_job_seq", "job_id", "seq"),
    )


class Artifact(Base):
    __tablename__ = "artifacts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id(ARTIFACT))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(String(1024))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(2048))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (UniqueConstraint("job_id", "path", name="uq_artifacts_job_path"),)


class File(Base):
    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id(FILE))
    seq: Mapped[int] = mapped_column(BigInteger, Identity())
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(16))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    num_records: Mapped[int] = mapped_column(Integer)
    storage_path: Mapped[str] = mapped_column(String(2048))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (
        UniqueConstraint("seq", name="uq_files_seq"),
        Index("ix_files_tenant_seq", "tenant", "seq"),
    )


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"

    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    key: Mapped[str] = mapped_column(String(256), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str] = mapped_column(String(16))
    object_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id(WEBHOOK_DELIVERY))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(String(2048))
    event_type: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|delivered|failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column()
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),)


def _sqlite_seq(model: type[Base]) -> Any:
    # SQLite has no identity columns on non-key columns. Writers are serialised there, so
    # MAX(seq)+1 computed inside the INSERT statement itself is unique and increasing.
    table = model.__table__
    return select(func.coalesce(func.max(table.c.seq), 0) + 1).scalar_subquery()


def _fill_seq(mapper: Any, connection: Any, target: Any) -> None:
    if connection.dialect.name == "sqlite" and target.seq is None:
        target.seq = _sqlite_seq(type(target))


for _model in (Job, JobEvent, File):
    event.listen(_model, "before_insert", _fill_seq)
