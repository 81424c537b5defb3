"""Idempotency keys: the same key and the same request within the TTL give back the same object."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete
from sqlalchemy.orm import Session

from layerprune.db.models import IdempotencyKey, utcnow


def request_hash(payload: Any) -> str:
    """A stable hash of a request's meaning (canonical JSON: key order and spacing do not count)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class Replay:
    object_id: str
    same_request: bool  # False: the key was used for another request (409)


def lookup(session: Session, tenant: str, key: str, digest: str, object_type: str, ttl_hours: int) -> Replay | None:
    """What an earlier request with this key made, or None; a row older than the TTL is forgotten."""
    row = session.get(IdempotencyKey, (tenant, key))
    if row is None:
        return None
    if row.created_at < utcnow() - timedelta(hours=ttl_hours):
        session.execute(delete(IdempotencyKey).where(IdempotencyKey.tenant == tenant, IdempotencyKey.key == key,
                                                     IdempotencyKey.created_at == row.created_at))
        session.flush()
        return None
    return Replay(row.object_id, row.request_hash == digest and row.object_type == object_type)


def remember(session: Session, tenant: str, key: str, digest: str, object_type: str, object_id: str,
             now: datetime | None = None) -> None:
    """Record the key in the transaction that creates the object (a concurrent twin then fails
    on the primary key and is answered from the winner's row)."""
    session.add(IdempotencyKey(tenant=tenant, key=key, request_hash=digest, object_type=object_type,
                               object_id=object_id, created_at=now or utcnow()))
    session.flush()


def purge_expired(session: Session, ttl_hours: int) -> int:
    res = session.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < utcnow() - timedelta(hours=ttl_hours)))
    return res.rowcount or 0
