"""Refuse oversized JSON bodies before they are read whole (413).

``Content-Length`` is checked first; a body without one (chunked) is counted as it arrives and
cut off at the limit. Uploads (``/v1/files``) have their own, larger cap and are not counted here.
"""

from __future__ import annotations

import json
from typing import Any

from layerprune.api.errors import ApiError, error_body

Scope = dict[str, Any]


class BodyTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, "payload_too_large", f"the request body is over the {limit}-byte limit")


class BodyLimitMiddleware:
    def __init__(self, app: Any, max_bytes: int, exempt_prefixes: tuple[str, ...] = ("/v1/files",)) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = exempt_prefixes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS") or \
                scope["path"].startswith(self.exempt):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    await self._refuse(send)
                    return
        seen = 0
        limit = self.max_bytes

        async def counting_receive() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # Raised inside FastAPI's body read; an HTTPException passes through it as is.
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counting_receive, send)

    async def _refuse(self, send: Any) -> None:
        body = json.dumps(error_body("payload_too_large", f"the request body is over the {self.max_bytes}-byte limit")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
