"""The list envelope and cursor parameters shared by every list route."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query

from layerprune.api.errors import ApiError

LimitQuery = Annotated[int, Query(ge=1, le=100, description="page size (1..100)")]
AfterQuery = Annotated[str | None, Query(max_length=128, description="continue after this id (the previous page's last_id)")]


def bad_cursor(after: str) -> ApiError:
    return ApiError(422, "invalid_cursor", f"'{after}' is not an id from this list", param="after")


def envelope(items: list[Any], has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": items, "has_more": has_more,
            "last_id": items[-1].id if items else None}
