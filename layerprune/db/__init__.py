"""The service's database: models, sessions, migrations and small repositories."""

from layerprune.db.models import (
    ApiKey,
    Artifact,
    Base,
    File,
    IdempotencyKey,
    Job,
    JobEvent,
    WebhookDelivery,
)
from layerprune.db.session import get_engine, session_factory, session_scope

__all__ = [
    "ApiKey",
    "Artifact",
    "Base",
    "File",
    "IdempotencyKey",
    "Job",
    "JobEvent",
    "WebhookDelivery",
    "get_engine",
    "session_factory",
    "session_scope",
]
