"""Request dependencies as typed aliases, so route signatures read like sentences.

Database sessions under load (issue 11). Sync routes, and FastAPI's validation of what they
return, run on a bounded set of worker threads (``LAYERPRUNE_API_THREADS``); connections come from
a bounded pool. A thread that waits for a connection while the connections are held by requests
that wait for a thread is a deadlock: with 200 pollers every request timed out. So a worker thread
must never wait for a connection, which holds when connections are only held by running threads
and the pool has one for each of them:

- GET and HEAD requests get a read-only session (``db.session.read_session_factory``): it holds
  a connection only while a statement runs, in the thread that runs it;
- other requests keep one transaction (they write) and may hold their connection while they wait
  for a thread, so at most ``write_slots`` of them hold a session at once (the rest wait here,
  asynchronously, holding nothing), and the pool has room for the threads plus those slots plus
  the app's own background threads (checked by :func:`check_pool`);
- the session is closed on the event loop when it holds no connection (nothing to send to the
  database), else on a thread of its own that never waits for the bounded set.

The API key check costs no database round trip, and opens no session, while the key is in the
app's short :class:`~layerprune.api.key_cache.KeyCache`; a miss reads it through a read-only
session of its own.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from layerprune.api import auth_limit
from layerprune.api.errors import ApiError
from layerprune.api.job_cache import JobCache
from layerprune.api.job_changes import feed_for
from layerprune.api.key_cache import KeyCache
from layerprune.db.keys import tenant_for_key
from layerprune.db.session import get_engine, pool_capacity, read_session_factory, session_factory
from layerprune.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`")

READ_METHODS = ("GET", "HEAD")
BACKGROUND_CONNECTIONS = 2  # the sweeper thread and the webhook sender, one connection each


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def check_pool(capacity: int | None, settings: Settings) -> int:
    """How many writing requests may hold a session at once, so that no thread waits for a connection.

    Raises ``ValueError`` naming the settings when the pool cannot hold a connection for every
    thread, the background threads and at least one writing request.
    """
    if capacity is None:
        return settings.api_threads  # no pool limit (in-memory SQLite): nothing to wait for
    slots = capacity - settings.api_threads - BACKGROUND_CONNECTIONS
    if slots < 1:
        raise ValueError(
            f"the database pool ({capacity} connections: LAYERPRUNE_DB_POOL_SIZE + LAYERPRUNE_DB_MAX_OVERFLOW) "
            f"must exceed LAYERPRUNE_API_THREADS ({settings.api_threads}) + {BACKGROUND_CONNECTIONS}, so that "
            "no request thread ever waits for a connection; raise the pool or lower the threads")
    return slots


def _write_gate(app: FastAPI) -> asyncio.Semaphore:
    # One semaphore per event loop: tests run an app on several loops in turn.
    gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = app.state.write_gates
    loop = asyncio.get_running_loop()
    gate = gates.get(loop)
    if gate is None:
        gate = gates[loop] = asyncio.Semaphore(app.state.write_slots)
    return gate


async def _close(session: Session) -> None:
    if not session.in_transaction():
        session.close()  # no connection: nothing but bookkeeping
        return
    # Ending the transaction is a round trip: on a thread, but not one of the bounded set (which
    # may all be busy waiting for us), and shielded so a client that went away cannot leak it.
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(session.close, limiter=anyio.CapacityLimiter(1))


async def get_session(request: Request) -> AsyncIterator[Session]:
    """One session per request; rolled back unless the route committed (see the module docstring)."""
    state = request.app.state
    if request.method in READ_METHODS:
        session = state.read_session_factory()
        try:
            yield session
        finally:
            await _close(session)
        return
    async with _write_gate(request.app):
        session = state.session_factory()
        try:
            yield session
        finally:
            await _close(session)


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_session)]


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


def _lookup_tenant(factory: Any, key: str) -> str | None:
    session = factory()
    try:
        return tenant_for_key(session, key)
    finally:
        session.close()  # may write (a legacy hash upgraded): then it ends that transaction here


async def get_tenant(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The tenant of the request's API key; 401 with ``WWW-Authenticate: Bearer`` otherwise."""
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise _unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    auth_limit.refuse_if_blocked(request)  # 429 while this client is over the failed-key limit
    cache: KeyCache = request.app.state.key_cache
    key = credentials.credentials
    tenant = cached_tenant(request.app, key)
    if tenant is None:
        tenant = await run_in_threadpool(_lookup_tenant, request.app.state.read_session_factory, key)
        if tenant is not None:
            cache.put(key, tenant)
    if tenant is None:
        auth_limit.record_failure(request)
        raise _unauthorized("invalid API key")
    # For the request log line. (Not bound into the log context: the route's own log calls name
    # the tenant themselves, and a bound field may not be given again as ``extra``.)
    request.state.tenant = tenant
    return tenant


TenantDep = Annotated[str, Depends(get_tenant)]


def cached_tenant(app: FastAPI, key: str) -> str | None:
    """The tenant of ``key`` from the key cache (None: not there); a key about to expire is checked
    again in the background (see :mod:`layerprune.api.key_cache`). Call on the event loop."""
    cache: KeyCache = app.state.key_cache
    tenant, refresh = cache.lookup(key)
    if refresh:
        task = asyncio.get_running_loop().create_task(_refresh_key(app, key))
        app.state.key_refreshes.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(app.state.key_refreshes.discard)
    return tenant


async def _refresh_key(app: FastAPI, key: str) -> None:
    cache: KeyCache = app.state.key_cache
    try:
        tenant = await run_in_threadpool(_lookup_tenant, app.state.read_session_factory, key)
    except Exception:  # noqa: BLE001 - database unavailable: the entry expires; requests then answer 503
        cache.forget(key)
        return
    if tenant is None:
        cache.forget(key)  # revoked (or removed) since it was verified
    else:
        cache.put(key, tenant)


def install_sessions(app: FastAPI, settings: Settings) -> None:
    """The app's session factories, key cache and write slots (checked against the pool)."""
    url = settings.effective_database_url
    app.state.session_factory = session_factory(url)
    app.state.read_session_factory = read_session_factory(url)
    app.state.write_slots = check_pool(pool_capacity(get_engine(url)), settings)
    app.state.write_gates = weakref.WeakKeyDictionary()
    app.state.key_cache = KeyCache(settings.api_key_cache_seconds)
    app.state.key_refreshes = set()
    app.state.job_cache = JobCache(feed_for(url, settings.job_cache))


def limit_threads(settings: Settings) -> Any:
    """Set the event loop's thread limit for sync routes and ``run_in_threadpool`` (call inside the loop)."""
    limiter = anyio.to_thread.current_default_thread_limiter()
    limiter.total_tokens = settings.api_threads
    return limiter
