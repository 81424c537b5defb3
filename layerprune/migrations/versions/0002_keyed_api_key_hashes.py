"""API keys hashed with a server secret: ``api_keys.hash_scheme``, existing rows re-hashed.

Rows written by 0001 hold ``sha256_hex(key)``. The keyed hash is ``HMAC-SHA256(secret,
sha256_hex(key))`` (db/keys.py), so each row is upgraded from its stored value alone. When the
secret is known here (``LAYERPRUNE_KEY_SECRET``, or the development secret of the embedded
database) every row is upgraded now; otherwise rows keep ``hash_scheme = 'sha256'`` and each is
upgraded the first time its key is used.

Downgrade: a keyed hash cannot be turned back into ``sha256_hex(key)``, and 0001's code would
never match it again; such keys are revoked (``revoked_at`` set) rather than left silently dead.
Legacy rows keep working.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from layerprune.db.keys import SCHEME_HMAC, SCHEME_SHA256, key_secret_or_none, upgrade_hash
from layerprune.db.models import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_keys = sa.table("api_keys", sa.column("id", sa.String), sa.column("key_hash", sa.String),
                 sa.column("hash_scheme", sa.String), sa.column("revoked_at", UTCDateTime()))


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("hash_scheme", sa.String(16), nullable=False, server_default="sha256"))

    secret = key_secret_or_none()
    if secret is None:
        return
    conn = op.get_bind()
    rows = conn.execute(sa.select(_keys.c.id, _keys.c.key_hash).where(_keys.c.hash_scheme == SCHEME_SHA256)).all()
    for key_id, legacy in rows:
        conn.execute(sa.update(_keys).where(_keys.c.id == key_id)
                     .values(key_hash=upgrade_hash(secret, legacy), hash_scheme=SCHEME_HMAC))


def downgrade() -> None:
    op.get_bind().execute(sa.update(_keys).where(_keys.c.hash_scheme != "sha256", _keys.c.revoked_at.is_(None))
                          .values(revoked_at=datetime.now(UTC)))
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("hash_scheme")
