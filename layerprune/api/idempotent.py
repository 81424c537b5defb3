"""Idempotency-Key replays for the create routes (jobs, studies): one rule for a reused key."""

from __future__ import annotations

from typing import Any

from layerprune.api.errors import ApiError
from layerprune.db import idempotency


def replayed_id(session: Any, tenant: str, key: str, digest: str, kind: str, ttl_hours: int) -> str | None:
    """The id of the ``kind`` object an earlier request with this key created, or None.

    A key used before with a different body is a 409: the client must not get another request's object.
    """
    replay = idempotency.lookup(session, tenant, key, digest, kind, ttl_hours)
    if replay is None:
        return None
    if not replay.same_request:
        raise ApiError(409, "idempotency_key_reused",
                       "this Idempotency-Key was used with a different request body", param="Idempotency-Key")
    return replay.object_id
