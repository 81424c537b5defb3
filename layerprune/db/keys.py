"""API keys: stored as keyed hashes, looked up by hash, bootstrapped from settings.

A key is stored as ``HMAC-SHA256(secret, sha256_hex(key))`` (scheme ``hmac-sha256``), so a copy
of the database alone does not let anyone test guesses offline: that also needs the server
secret (``LAYERPRUNE_KEY_SECRET``). The HMAC is taken over the *sha256 hex digest* rather than
the key itself because rows written before migration 0002 hold exactly that digest (scheme
``sha256``): any such row can be upgraded without knowing its key. Migration 0002 upgrades every
row when the secret is known at migration time; a row it could not upgrade is upgraded the first
time its key is used (``tenant_for_key``).

The secret: ``LAYERPRUNE_KEY_SECRET`` (at least 32 characters) when set. Unset, with the embedded
SQLite database (development, one machine by construction), a random secret is generated once
and kept in ``<data dir>/key_secret`` (mode 0600). Unset with a server database (production,
where API replicas must agree on it) is a configuration error: the API refuses to start.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from functools import lru_cache
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from layerprune.db.models import ApiKey
from layerprune.settings import Settings, get_settings

SCHEME_SHA256 = "sha256"  # legacy rows (before migration 0002): sha256_hex(key)
SCHEME_HMAC = "hmac-sha256"  # HMAC-SHA256(secret, sha256_hex(key))
MIN_SECRET_CHARS = 32
SECRET_FILE = "key_secret"


class KeySecretError(ValueError):
    """The key secret is missing or unusable; the message says what to set."""


def key_secret(settings: Settings | None = None) -> bytes:
    """The HMAC secret of the key hashes (see the module docstring for where it comes from)."""
    settings = settings or get_settings()
    configured = settings.key_secret.get_secret_value() if settings.key_secret is not None else ""
    return _resolve_secret(configured, str(settings.data_dir), settings.uses_embedded_database)


def key_secret_or_none(settings: Settings | None = None) -> bytes | None:
    """``key_secret``, or None where it is not configured (a migration then leaves rows as they are)."""
    try:
        return key_secret(settings)
    except KeySecretError:
        return None


@lru_cache(maxsize=8)
def _resolve_secret(configured: str, data_dir: str, embedded: bool) -> bytes:
    if configured:
        if len(configured) < MIN_SECRET_CHARS:
            raise KeySecretError(f"LAYERPRUNE_KEY_SECRET must be at least {MIN_SECRET_CHARS} characters "
                                 "(for example: openssl rand -hex 32)")
        return configured.encode("utf-8")
    if not embedded:
        raise KeySecretError("LAYERPRUNE_KEY_SECRET is not set: with a server database every API replica must "
                             "hash API keys with the same secret; set it (openssl rand -hex 32) everywhere the "
                             "API or 'layerprune keys' runs")
    return _file_secret(Path(data_dir) / SECRET_FILE)


def _file_secret(path: Path) -> bytes:
    """Read the development secret, creating it first if needed (safe when processes race)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_hex(32).encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # atomic and never overwrites: the first process's secret wins
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    value = path.read_text(encoding="ascii").strip()
    if len(value) < MIN_SECRET_CHARS:
        raise KeySecretError(f"{path} holds no usable key secret; delete it or set LAYERPRUNE_KEY_SECRET")
    return value.encode("ascii")


def sha256_hex(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def upgrade_hash(secret: bytes, legacy_hash: str) -> str:
    """A legacy row's stored ``sha256_hex(key)`` → the keyed hash of the same key."""
    return hmac.new(secret, legacy_hash.encode("ascii"), hashlib.sha256).hexdigest()


def hash_key(key: str) -> str:
    """The stored form of ``key`` under the current scheme."""
    return upgrade_hash(key_secret(), sha256_hex(key))


def _find(session: Session, key: str) -> ApiKey | None:
    """The row of ``key`` under either scheme; a legacy row is upgraded and committed on the way."""
    legacy = sha256_hex(key)
    keyed = upgrade_hash(key_secret(), legacy)
    for row in session.scalars(select(ApiKey).where(ApiKey.key_hash.in_([keyed, legacy]))):
        if row.hash_scheme == SCHEME_HMAC and hmac.compare_digest(row.key_hash, keyed):
            return row
        if row.hash_scheme == SCHEME_SHA256 and hmac.compare_digest(row.key_hash, legacy):
            # First use since migration 0002 ran without the secret: store the keyed hash now.
            # Guarded on the old value, so two requests racing here write the same thing once.
            session.execute(update(ApiKey).where(ApiKey.id == row.id, ApiKey.key_hash == legacy)
                            .values(key_hash=keyed, hash_scheme=SCHEME_HMAC))
            session.commit()
            session.refresh(row)
            return row
    return None


def tenant_for_key(session: Session, key: str) -> str | None:
    """The tenant of an active key, or None (unknown or revoked)."""
    row = _find(session, key)
    if row is None or row.revoked_at is not None:
        return None
    return row.tenant


def add_key(session: Session, tenant: str, key: str | None = None, *, name: str | None = None) -> str:
    """Create a key for ``tenant`` (random when not given) and return the plain key, shown once."""
    key = key or "lp_" + secrets.token_urlsafe(32)
    session.add(ApiKey(tenant=tenant, key_hash=hash_key(key), hash_scheme=SCHEME_HMAC, name=name))
    session.flush()
    return key


def bootstrap_keys(session: Session, pairs: list[tuple[str, str]]) -> int:
    """Create the ``(tenant, key)`` pairs that do not exist yet; returns how many were created.

    Idempotent, and safe when several processes start at once (a concurrent insert of the same
    hash is a unique violation, which means the key exists).
    """
    created = 0
    for tenant, key in pairs:
        existing = _find(session, key)
        if existing is not None:
            if existing.tenant != tenant:
                raise ValueError("LAYERPRUNE_API_KEYS gives one key to two tenants")
            continue
        try:
            with session.begin_nested():
                session.add(ApiKey(tenant=tenant, key_hash=hash_key(key), hash_scheme=SCHEME_HMAC, name="bootstrap"))
            created += 1
        except IntegrityError:
            pass
    return created
