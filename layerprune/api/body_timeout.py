"""A request body that stops arriving is answered 408 ``request_timeout`` instead of waiting forever.

A client that declares ``Content-Length: 1000`` and sends nothing would otherwise hold its
connection and the route reading the body (and for an upload, a database session) for as long as
it likes. Each wait for the next piece of the body is limited to
``LAYERPRUNE_REQUEST_BODY_TIMEOUT_SECONDS``; a slow but steady upload is never cut off. Once the
body is complete the wrapper steps aside: what the app then waits for is the client going away
(server-sent events), which has no deadline. The request line and headers have their own timeout
in the server (``api/server.py``), since the app only sees a request once they are complete.
"""

from __future__ import annotations

from typing import Any

import anyio

from layerprune.api.errors import ApiError

Scope = dict[str, Any]


class BodyTimeout(ApiError):
    def __init__(self, seconds: float) -> None:
        super().__init__(408, "request_timeout", f"the request body stopped arriving (nothing for {seconds:g} s)",
                         headers={"Connection": "close"})


class BodyTimeoutMiddleware:
    def __init__(self, app: Any, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_done = False
        seconds = self.seconds

        async def timed_receive() -> Any:
            nonlocal body_done
            if body_done:
                return await receive()
            with anyio.move_on_after(seconds) as waited:
                message = await receive()
            if waited.cancelled_caught:
                # Raised inside FastAPI's body read (an HTTPException passes through it as is), or
                # inside a route that streams the body: either way the error handler answers 408.
                raise BodyTimeout(seconds)
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        await self.app(scope, timed_receive, send)
