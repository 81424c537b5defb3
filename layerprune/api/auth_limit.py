"""Failed-authentication limiting: a client address that sent ``auth_fail_limit`` wrong API keys
within ``auth_fail_window_seconds`` is answered 429 ``too_many_requests`` with ``Retry-After``
until the oldest of those failures leaves the window.

- Only wrong keys count (a request without a key tests nothing). Requests that authenticate
  are never delayed and cost one dictionary look-up here.
- While an address is refused, its requests are refused *before* the key is checked, whatever
  the key: answering a right key with 200 and a wrong one with 429 would let the guessing go on
  at full speed. So at most ``auth_fail_limit`` keys per window can be tried from one address.
- Memory is bounded: per address at most ``auth_fail_limit`` timestamps, and at most
  ``auth_fail_max_clients`` addresses (the least recently failing is forgotten first).
- The state is per API process; N replicas allow N times the guesses, which is still a bound.
- The client is the TCP peer, unless that peer is listed in ``LAYERPRUNE_TRUSTED_PROXIES``: then
  ``X-Forwarded-For`` is read from the right (the entry the nearest proxy appended) and the first
  address that is not a trusted proxy is the client. An untrusted peer's header is ignored, so a
  client cannot pick its own address.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from fastapi import FastAPI, Request

from layerprune.api.errors import ApiError
from layerprune.settings import Settings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class FailedAuthLimiter:
    """Sliding-window counts of failures per client, in an LRU of bounded size. Thread-safe
    (FastAPI runs sync dependencies in a thread pool)."""

    def __init__(self, limit: int, window_s: float, max_clients: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_clients = max_clients
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> float | None:
        """Seconds until ``client`` may try a key again; None when it may now."""
        with self._lock:
            times = self._failures.get(client)
            if times is None:
                return None
            now = self._clock()
            while times and now - times[0] >= self.window_s:
                times.popleft()
            if not times:
                del self._failures[client]
                return None
            if len(times) < self.limit:
                return None
            return times[0] + self.window_s - now

    def record_failure(self, client: str) -> None:
        with self._lock:
            times = self._failures.pop(client, None)
            if times is None:
                times = deque(maxlen=self.limit)
            times.append(self._clock())
            self._failures[client] = times  # most recent at the end
            while len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)

    def __len__(self) -> int:
        return len(self._failures)


def _trusted(address: str, proxies: list[Network]) -> bool:
    if not proxies:
        return False  # the usual case: no address parsing on every request
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in proxies)


def client_address(peer: str | None, forwarded_for: list[str], proxies: list[Network]) -> str:
    """The client's address: ``peer``, or what trusted proxies say in ``X-Forwarded-For``."""
    client = peer or "unknown"
    if not _trusted(client, proxies):
        return client
    hops = [h.strip() for value in forwarded_for for h in value.split(",") if h.strip()]
    for hop in reversed(hops):
        client = hop
        if not _trusted(hop, proxies):
            break
    return client


class _Guard:
    def __init__(self, settings: Settings) -> None:
        self.limiter = FailedAuthLimiter(settings.auth_fail_limit, settings.auth_fail_window_seconds,
                                         settings.auth_fail_max_clients)
        self.proxies = settings.trusted_proxy_networks

    def client(self, request: Request) -> str:
        peer = request.client.host if request.client else None
        return client_address(peer, request.headers.getlist("x-forwarded-for"), self.proxies)


_create_lock = threading.Lock()


def _guard(app: FastAPI) -> _Guard:
    guard = getattr(app.state, "auth_guard", None)
    if guard is None:
        with _create_lock:
            guard = getattr(app.state, "auth_guard", None)
            if guard is None:
                guard = app.state.auth_guard = _Guard(app.state.settings)
    return guard


def any_failures(app: FastAPI) -> bool:
    """Whether some client has failures on record (else no request can be refused: a cheap test)."""
    return len(_guard(app).limiter) > 0


def refuse_if_blocked(request: Request) -> None:
    """429 ``too_many_requests`` with ``Retry-After`` while the client is over the limit."""
    guard = _guard(request.app)
    wait = guard.limiter.retry_after(guard.client(request))
    if wait is not None:
        seconds = max(1, math.ceil(wait))
        raise ApiError(429, "too_many_requests",
                       f"too many wrong API keys from this address; retry in {seconds} s",
                       headers={"Retry-After": str(seconds)})


def record_failure(request: Request) -> None:
    """Count a wrong API key against the request's client."""
    guard = _guard(request.app)
    guard.limiter.record_failure(guard.client(request))
