"""api.body_timeout: a body that stops arriving is a 408 that closes the connection; a slow but
steady body, and the wait for a client to go away once the body is complete, are never cut off."""

from __future__ import annotations

import time
from typing import Any

import anyio
from fastapi import FastAPI, Request

from layerprune.api.body_timeout import BodyTimeoutMiddleware
from layerprune.api.errors import install_error_handlers
from tests.api.asgi_driver import call, pieces, scope

SECONDS = 0.3


def make_app() -> tuple[Any, list[str]]:
    seen: list[str] = []
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/json")
    def take_json(body: dict[str, Any]) -> dict[str, int]:
        seen.append("json")
        return {"keys": len(body)}

    @app.post("/stream")
    async def take_stream(request: Request) -> dict[str, int]:
        total = 0
        async for piece in request.stream():
            total += len(piece)
        seen.append(f"stream:{total}")
        return {"bytes": total}

    @app.post("/after-body")
    async def wait_after_body(request: Request) -> dict[str, str]:
        await request.body()
        # What an SSE route does once the body is in: wait on the client (here, longer than the
        # body timeout, then give up by itself).
        with anyio.move_on_after(3 * SECONDS):
            await request.receive()
        seen.append("waited")
        return {"status": "ok"}

    return BodyTimeoutMiddleware(app, seconds=SECONDS), seen


def test_a_json_body_that_stops_is_a_408_naming_the_wait() -> None:
    app, seen = make_app()
    start = time.monotonic()
    answer = call(app, scope("POST", "/json", {"content-length": "1000", "content-type": "application/json"}),
                  pieces(b'{"a": ', stall_after=1))
    elapsed = time.monotonic() - start
    assert answer.status == 408
    assert answer.json() == {"error": {"code": "request_timeout", "param": None,
                                       "message": f"the request body stopped arriving (nothing for {SECONDS:g} s)"}}
    assert answer.headers["connection"] == "close"
    assert seen == []
    assert SECONDS <= elapsed < SECONDS + 5  # one wait, not the whole call's limit


def test_a_streamed_body_that_never_starts_is_a_408() -> None:
    app, seen = make_app()
    answer = call(app, scope("POST", "/stream", {"content-length": "10"}), pieces(stall_after=0))
    assert answer.status == 408
    assert answer.json()["error"]["code"] == "request_timeout"
    assert seen == []


def test_a_slow_but_steady_body_is_never_cut_off() -> None:
    app, seen = make_app()
    chunks = [b"x" * 10] * 6  # 6 pieces, each 0.5 × the timeout apart: 1.5 × the timeout in all
    answer = call(app, scope("POST", "/stream"), pieces(*chunks, delay=SECONDS / 2))
    assert answer.status == 200, answer.body
    assert seen == ["stream:60"]


def test_waiting_for_the_client_after_the_body_has_no_deadline() -> None:
    app, seen = make_app()
    answer = call(app, scope("POST", "/after-body", {"content-length": "2"}), pieces(b"{}"))
    assert answer.status == 200, answer.body
    assert seen == ["waited"]


def test_other_protocols_pass_through_untimed() -> None:
    calls: list[str] = []

    async def inner(sc: dict[str, Any], receive: Any, send: Any) -> None:
        with anyio.move_on_after(2 * SECONDS):
            await receive()  # a websocket or lifespan wait is not a request body
        calls.append(sc["type"])

    async def main() -> None:
        await BodyTimeoutMiddleware(inner, seconds=SECONDS)({"type": "lifespan"}, pieces(stall_after=0), None)

    anyio.run(main)
    assert calls == ["lifespan"]
