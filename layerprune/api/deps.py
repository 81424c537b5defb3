"""Request dependencies as typed aliases, so route signatures read like sentences."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from layerprune.api import auth_limit
from layerprune.api.errors import ApiError
from layerprune.db.keys import tenant_for_key
from layerprune.logs import bind_fields
from layerprune.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`")


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    """One session per request; rolled back unless the route committed."""
    session = request.app.state.session_factory()
    try:
        yield session
    finally:
        session.close()


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_session)]


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


def get_tenant(
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The tenant of the request's API key; 401 with ``WWW-Authenticate: Bearer`` otherwise."""
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise _unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    auth_limit.refuse_if_blocked(request)  # 429 while this client is over the failed-key limit
    tenant = tenant_for_key(session, credentials.credentials)
    session.rollback()  # end the read transaction (SQLite: release the lock early)
    if tenant is None:
        auth_limit.record_failure(request)
        raise _unauthorized("invalid API key")
    bind_fields(tenant=tenant)
    request.state.tenant = tenant  # for the request log line (sync dependencies run in a thread)
    return tenant


TenantDep = Annotated[str, Depends(get_tenant)]
