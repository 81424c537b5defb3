"""The one error shape: ``{"error": {"code", "message", "param"}}`` for every 4xx and 5xx.

Client input never produces a 500: pydantic errors become 422 naming the field (``prune.ratio``),
core's ``SpecError`` becomes 422 with its ``param``, and a database that cannot be reached is a
503 ``database_unavailable`` (the request can be retried; the service recovers by itself).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from layerprune.core.errors import LayerPruneError

log = logging.getLogger(__name__)

STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    411: "length_required",
    413: "payload_too_large",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
    422: "invalid_request",
    429: "rate_limited",
    500: "internal_error",
    503: "service_unavailable",
}


class ApiError(StarletteHTTPException):
    """An error answered with the contract's shape. Subclasses HTTPException so FastAPI lets it
    through its body-reading code unchanged (the body limit raises it from inside ``receive``)."""

    def __init__(self, status_code: int, code: str, message: str, *, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code=status_code, detail=message, headers=headers)
        self.code = code
        self.message = message
        self.param = param


def not_found(what: str, param: str | None = None) -> ApiError:
    return ApiError(404, "not_found", f"no such {what}", param=param)


def error_body(code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "param": param}}


def error_response(status: int, code: str, message: str, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message, param), status_code=status, headers=headers)


def loc_to_param(loc: Sequence[Any]) -> str | None:
    """pydantic ``loc`` → the spec's JSON path: ("body", "prune", "ratio") → "prune.ratio".

    List indices are dropped (the field is ``prune.layers``; the message says which item), and
    the request part ("body", "query", "header", "path") is dropped too, except that a query or
    header parameter keeps its own name.
    """
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "header", "path", "cookie"):
        parts = parts[1:]
    names = [str(p) for p in parts if not isinstance(p, int)]
    # pydantic adds a type tag to union members ("function-after[...]" etc.): not a field name
    names = [n for n in names if "[" not in n and "-" not in n]
    return ".".join(names) or None


def _validation_message(err: dict[str, Any], param: str | None) -> str:
    msg = str(err.get("msg", "invalid value"))
    idx = [p for p in err.get("loc", ()) if isinstance(p, int)]
    where = param or "request"
    if idx:
        where += "".join(f"[{i}]" for i in idx)
    if err.get("type") == "extra_forbidden":
        return f"unknown field '{where}'"
    return f"{where}: {msg}"


async def _validation_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        return error_response(422, "invalid_json", f"the body is not valid JSON: {first.get('msg')}")
    if first.get("type") == "missing" and tuple(first.get("loc", ())) == ("body",):
        return error_response(422, "invalid_request", "a JSON body is required")
    param = loc_to_param(first.get("loc", ()))
    return error_response(422, "invalid_request", _validation_message(first, param), param)


async def _core_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, LayerPruneError)
    return error_response(422, exc.code, exc.message, exc.param)


_METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> str:
    """``Allow`` for the request's path: every method of every route on that path, and OPTIONS.

    Starlette's own 405 names only the methods of the first route that matched the path, so a
    path served by two routes (GET and DELETE ``/v1/jobs/{id}``) advertised one of them.
    """
    allowed = []
    for method in _METHOD_ORDER:
        # A fresh scope per method, matched through the routers' public ``matches`` (which also
        # walks included routers): FULL means a route on this path takes this method.
        probe = {"type": "http", "path": request.scope["path"], "root_path": request.scope.get("root_path", ""),
                 "method": method, "headers": [], "query_string": b""}
        if method == "OPTIONS" or any(r.matches(probe)[0] == Match.FULL for r in request.app.router.routes):
            allowed.append(method)
    return ", ".join(allowed)


async def _http_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        allow = allowed_methods(request)
        if request.method == "OPTIONS":
            # RFC 9110 §9.3.7: OPTIONS asks which methods the resource supports; that is an answer.
            return Response(status_code=204, headers={"Allow": allow})
        return error_response(405, "method_not_allowed", f"{request.method} is not supported here; use {allow}",
                              headers={"Allow": allow})
    if isinstance(exc, ApiError):
        return error_response(exc.status_code, exc.code, exc.message, exc.param, exc.headers)
    if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
        # FastAPI's "There was an error parsing the body" does not say what was wrong with it.
        return error_response(400, "bad_request", f"the body is not UTF-8 text (bad byte at offset "
                                                  f"{exc.__cause__.start}); send UTF-8 JSON")
    code = STATUS_CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(exc.status_code, code, message, None, exc.headers)


# SQLite raises OperationalError for malformed statements too ("JSON path error", "no such
# table"): those are bugs (500), not an outage a client should retry. These messages are the
# file being busy or unreachable.
_SQLITE_UNAVAILABLE = ("database is locked", "database table is locked", "unable to open database",
                       "disk i/o error", "database or disk is full")


# Postgres SQLSTATE classes of an unavailable server: connection exception, insufficient resources
# (too many connections, disk full), operator intervention (shutdown, cancel), system error (I/O).
# Class 54 (a statement too complex, a value past a limit) is an OperationalError too, but retrying
# it can never help.
_POSTGRES_UNAVAILABLE = ("08", "53", "57", "58")


def is_database_down(exc: BaseException) -> bool:
    """Connection-level database failures (server down, restarting, pool exhausted)."""
    if isinstance(exc, sa_exc.OperationalError) and type(exc.orig).__module__ == "sqlite3":
        return str(exc.orig).lower().startswith(_SQLITE_UNAVAILABLE)
    sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None)
    if isinstance(exc, sa_exc.OperationalError) and sqlstate:  # None: no answer from the server at all
        return sqlstate[:2] in _POSTGRES_UNAVAILABLE
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError):
        return True
    return isinstance(exc, sa_exc.DBAPIError) and bool(exc.connection_invalidated)


async def _database_handler(_request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, sa_exc.DataError):
        # A value the database refuses to store or compare (a NUL character, say): the client's.
        return error_response(422, "invalid_request", "the request holds a value that cannot be stored "
                              "(for example a NUL character)")
    if is_database_down(exc):
        log.warning("database unavailable: %s", type(exc).__name__)
        return error_response(503, "database_unavailable", "the database is unavailable; retry shortly",
                              headers={"Retry-After": "5"})
    log.exception("database error")
    return error_response(500, "internal_error", "internal error")


async def _unexpected_handler(_request: Request, exc: Exception) -> JSONResponse:
    if is_database_down(exc):
        return await _database_handler(_request, exc)
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal_error", "internal error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(LayerPruneError, _core_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler)
    app.add_exception_handler(sa_exc.SQLAlchemyError, _database_handler)
    app.add_exception_handler(Exception, _unexpected_handler)
