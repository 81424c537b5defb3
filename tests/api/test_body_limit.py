"""api.body_limit: a JSON body over the limit is a 413 in the contract's error shape, whether it
declares its length or arrives in pieces; uploads, reads and other protocols pass untouched."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi import FastAPI, Request

from layerprune.api.body_limit import BodyLimitMiddleware
from layerprune.api.errors import install_error_handlers
from tests.api.asgi_driver import call, pieces, scope

LIMIT = 100


def make_app() -> tuple[Any, list[int]]:
    seen: list[int] = []  # body sizes the routes received
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/v1/echo")
    def echo(body: dict[str, Any]) -> dict[str, int]:
        seen.append(len(json.dumps(body)))
        return {"keys": len(body)}

    @app.post("/v1/files")
    async def upload(request: Request) -> dict[str, int]:
        seen.append(len(await request.body()))
        return {"bytes": seen[-1]}

    return BodyLimitMiddleware(app, max_bytes=LIMIT), seen


def body_of(size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes."""
    data = json.dumps({"x": ""}).encode()
    return json.dumps({"x": "a" * (size - len(data))}).encode()


def test_declared_length_over_the_limit_is_refused_before_the_app_reads_it() -> None:
    app, seen = make_app()
    body = body_of(LIMIT + 1)
    # The receive stalls: a refusal that waited for the body would time out instead.
    answer = call(app, scope("POST", "/v1/echo", {"content-length": str(len(body)),
                                                  "content-type": "application/json"}), pieces(stall_after=0))
    assert answer.status == 413
    assert answer.json() == {"error": {"code": "payload_too_large", "param": None,
                                       "message": f"the request body is over the {LIMIT}-byte limit"}}
    assert answer.headers["connection"] == "close"
    assert int(answer.headers["content-length"]) == len(answer.body)
    assert seen == []


def test_a_body_of_exactly_the_limit_passes() -> None:
    app, seen = make_app()
    body = body_of(LIMIT)
    answer = call(app, scope("POST", "/v1/echo", {"content-length": str(LIMIT), "content-type": "application/json"}),
                  pieces(body))
    assert answer.status == 200, answer.body
    assert seen == [LIMIT]


@pytest.mark.parametrize("declared", [None, "not-a-number", "10"])
def test_a_body_without_an_honest_length_is_counted_as_it_arrives(declared: str | None) -> None:
    app, seen = make_app()
    body = body_of(3 * LIMIT)
    headers = {"content-type": "application/json"}
    if declared is not None:
        headers["content-length"] = declared
    chunks = [body[i:i + 40] for i in range(0, len(body), 40)]
    answer = call(app, scope("POST", "/v1/echo", headers), pieces(*chunks))
    assert answer.status == 413
    assert answer.json()["error"]["code"] == "payload_too_large"
    assert seen == []


def test_small_chunked_body_passes() -> None:
    app, seen = make_app()
    body = body_of(LIMIT - 10)
    answer = call(app, scope("POST", "/v1/echo", {"content-type": "application/json"}),
                  pieces(body[:30], body[30:60], body[60:]))
    assert answer.status == 200
    assert seen == [LIMIT - 10]


def test_uploads_have_their_own_cap_and_are_not_counted_here() -> None:
    app, seen = make_app()
    data = b"x" * (5 * LIMIT)
    answer = call(app, scope("POST", "/v1/files", {"content-length": str(len(data))}), pieces(data[:250], data[250:]))
    assert answer.status == 200
    assert seen == [5 * LIMIT]


def test_reads_and_lifespan_pass_through() -> None:
    calls: list[str] = []

    async def inner(sc: dict[str, Any], receive: Any, send: Any) -> None:
        calls.append(sc["type"] + ":" + sc.get("method", ""))
        if sc["type"] == "http":
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    app = BodyLimitMiddleware(inner, max_bytes=LIMIT)
    # A GET that (wrongly) declares a huge body is still a read: nothing to refuse.
    assert call(app, scope("GET", "/v1/echo", {"content-length": "99999"}), pieces()).status == 204
    import anyio

    async def lifespan() -> None:
        await app({"type": "lifespan"}, pieces(), lambda m: None)

    anyio.run(lifespan)
    assert calls == ["http:GET", "lifespan:"]
