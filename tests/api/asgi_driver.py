"""Drive an ASGI app with hand-made ``receive`` messages and record what it sends (no server).

The body middlewares act on the ASGI message stream itself (a ``Content-Length`` header, body
pieces arriving one by one, a piece that never comes); an HTTP client cannot send those shapes
on demand, so their tests speak ASGI directly.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

Receive = Callable[[], Awaitable[dict[str, Any]]]


@dataclass
class Answer:
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


def scope(method: str, path: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "path": path,
            "raw_path": path.encode(), "root_path": "", "scheme": "http", "query_string": b"",
            "server": ("test", 80), "client": ("127.0.0.1", 1234),
            "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]}


def pieces(*chunks: bytes, delay: float = 0.0, stall_after: int | None = None) -> Receive:
    """``receive`` giving ``chunks`` one per call (``more_body`` on all but the last), ``delay``
    seconds apart; after ``stall_after`` chunks (each then marked ``more_body``) it never answers again. Once the body is done it
    waits for ever, as a connected client does (then answers ``http.disconnect`` when cancelled)."""
    sent = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if stall_after is not None and sent >= stall_after:
            await anyio.sleep_forever()
        if sent >= len(chunks):
            await anyio.sleep_forever()
        if delay:
            await anyio.sleep(delay)
        sent += 1
        return {"type": "http.request", "body": chunks[sent - 1], "more_body": sent < len(chunks) or stall_after is not None}

    return receive


def call(app: Any, sc: dict[str, Any], receive: Receive, *, limit_s: float = 10.0) -> Answer:
    """Run one request through ``app``; the test fails (TimeoutError) if it takes over ``limit_s``."""
    answer = Answer()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer.status = message["status"]
            answer.headers = {k.decode().lower(): v.decode() for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            answer.body += message.get("body", b"")

    async def main() -> None:
        with anyio.fail_after(limit_s):
            await app(sc, receive, send)

    anyio.run(main)
    return answer
