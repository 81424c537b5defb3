"""How the API is served: uvicorn's options in one place, for ``layerprune serve`` and the load bench.

uvicorn waits forever for a request's head by default (its keep-alive timer only runs between
requests), so a client that opens a connection and trickles header bytes holds it indefinitely.
:class:`HeaderTimeoutProtocol` gives the request line and headers ``LAYERPRUNE_REQUEST_HEADER_TIMEOUT_SECONDS``
to arrive, counted from the connection's opening or from the first byte of a kept-alive connection's
next request, and then answers 408 in the contract's error shape and closes. The body has its own
timeout in the app (:mod:`layerprune.api.body_timeout`), where the answer can go through the
normal error handling.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from layerprune.api.errors import error_body
from layerprune.settings import Settings


def timeout_response(message: str) -> bytes:
    """A complete HTTP/1.1 408 in the contract's error shape, closing the connection."""
    body = json.dumps(error_body("request_timeout", message)).encode()
    head = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n")
    return head + body


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on each request's line and headers."""

    header_timeout: float = 10.0  # set per server by :func:`protocol_class`

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_head_timer()  # the next request on a kept-alive connection

    def on_headers_complete(self) -> None:
        self._disarm_head_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport is None or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is still being answered (pipelining): its own cycle closes it
        self.transport.write(timeout_response(
            f"the request line and headers did not arrive within {self.header_timeout:g} s"))
        self.transport.close()


def protocol_class(settings: Settings) -> type[HeaderTimeoutProtocol]:
    """A protocol class carrying this server's header timeout (uvicorn instantiates it per connection)."""
    return type("LayerpruneHttpProtocol", (HeaderTimeoutProtocol,),
                {"header_timeout": float(settings.request_header_timeout_seconds)})


def uvicorn_options(settings: Settings, log_level: str | None = None) -> dict[str, Any]:
    """Every uvicorn option but the app, host and port: what ``layerprune serve`` runs with."""
    return {
        "log_level": (log_level or settings.log_level).lower(),
        "proxy_headers": True,
        "access_log": False,  # the app logs each request itself (without the key)
        "http": protocol_class(settings),
        "loop": "auto",
        "timeout_keep_alive": settings.keep_alive_timeout_seconds,
    }


def serve(app: Any, host: str, port: int, settings: Settings, log_level: str | None = None) -> None:
    # One process: the app's background sweeps (outbox, reaper) expect one API per database
    # connection pool; scale out with more replicas behind a load balancer instead.
    uvicorn.run(app, host=host, port=port, **uvicorn_options(settings, log_level))
