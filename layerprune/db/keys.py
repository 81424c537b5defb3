"""API keys: stored as sha256 hashes, looked up by hash, bootstrapped from settings."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from layerprune.db.models import ApiKey


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def tenant_for_key(session: Session, key: str) -> str | None:
    """The tenant of an active key, or None (unknown or revoked)."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    if row is None or row.revoked_at is not None:
        return None
    return row.tenant


def add_key(session: Session, tenant: str, key: str | None = None, *, name: str | None = None) -> str:
    """Create a key for ``tenant`` (random when not given) and return the plain key, shown once."""
    key = key or "lp_" + secrets.token_urlsafe(32)
    session.add(ApiKey(tenant=tenant, key_hash=hash_key(key), name=name))
    session.flush()
    return key


def bootstrap_keys(session: Session, pairs: list[tuple[str, str]]) -> int:
    """Create the ``(tenant, key)`` pairs that do not exist yet; returns how many were created.

    Idempotent, and safe when several processes start at once (a concurrent insert of the same
    hash is a unique violation, which means the key exists).
    """
    created = 0
    for tenant, key in pairs:
        digest = hash_key(key)
        existing = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
        if existing is not None:
            if existing.tenant != tenant:
                raise ValueError("LAYERPRUNE_API_KEYS gives one key to two tenants")
            continue
        try:
            with session.begin_nested():
                session.add(ApiKey(tenant=tenant, key_hash=digest, name="bootstrap"))
            created += 1
        except IntegrityError:
            pass
    return created
