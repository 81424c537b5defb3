"""Idempotency-Key handling for the create routes (jobs, studies): one rule for a reused key.

``create_once`` is the whole protocol: replay an earlier request with the same key and body,
otherwise validate and insert, remember the key in the same transaction, and, when a concurrent
request with the same key committed first (the unique index raises IntegrityError), answer with
that request's object instead of a 500.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy.exc import IntegrityError

from layerprune.api.errors import ApiError
from layerprune.db import idempotency

Public = TypeVar("Public")
Row = TypeVar("Row")


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


@dataclass
class Outcome(Generic[Public, Row]):
    """Exactly one is set: the earlier request's public object (answer 200) or the new row (201)."""

    replayed: Public | None = None
    created: Row | None = None


def create_once(session: Any, tenant: str, key: str | None, digest: str, kind: str, ttl_hours: int, *,
                load: Callable[[str], Public], create: Callable[[], tuple[str, Row]]) -> Outcome[Public, Row]:
    """Create a ``kind`` object at most once per (tenant, Idempotency-Key, request body).

    ``load(object_id)`` renders an earlier object; ``create()`` validates, inserts (without
    committing) and returns the new object's id and row. Commits on success.
    """

    def replay() -> Public | None:
        object_id = replayed_id(session, tenant, key, digest, kind, ttl_hours) if key else None
        return None if object_id is None else load(object_id)

    earlier = replay()
    if earlier is not None:
        return Outcome(replayed=earlier)
    try:
        object_id, row = create()
        if key:
            idempotency.remember(session, tenant, key, digest, kind, object_id)
        session.commit()
    except IntegrityError:
        session.rollback()
        earlier = replay()  # a concurrent request with the same key won: answer with its object
        if earlier is not None:
            return Outcome(replayed=earlier)
        raise
    return Outcome(created=row)
