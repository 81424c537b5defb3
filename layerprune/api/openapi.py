"""``GET /openapi.json`` as the API really answers: FastAPI's document, completed once.

FastAPI documents what each route declares; some answers come from layers around the routes:

- 422 is always our error shape (``errors.py``), never FastAPI's ``HTTPValidationError``;
- any operation with a body can answer 400 (a body that cannot be decoded at all) and 413 (the
  body limit), and any operation that takes an API key 401 and 429 (``auth_limit.py``, with
  ``Retry-After``);
- links from the operations that create a job or a file to those that take its id, so a client
  generator (and the stateful property-based test) can follow them.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

ERROR_REF = {"$ref": "#/components/schemas/ErrorPublic"}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again", "required": True,
                                "schema": {"type": "integer", "minimum": 1}}}

# status → (when it applies, description, extra response fields). One table, so a new layer
# that answers a new status (a request timeout, say) adds one row.
LAYER_RESPONSES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "400": ("body", "The body cannot be decoded (not UTF-8, or not parseable at all)", {}),
    "413": ("body", "The body is over the size limit", {}),
    "408": ("body", "The body stopped arriving (`LAYERPRUNE_REQUEST_BODY_TIMEOUT_SECONDS`); the connection is closed",
            {}),
    "401": ("auth", "Missing or invalid API key", {}),
    "429": ("auth", "Too many wrong API keys from this client; retry after `Retry-After` seconds",
            {"headers": _RETRY_AFTER}),
}


def _error(description: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ERROR_REF}}, **extra}


def complete(schema: dict[str, Any]) -> dict[str, Any]:
    """Patch FastAPI's document in place (see the module docstring) and return it."""
    for path, operations in schema.get("paths", {}).items():
        for method, op in operations.items():
            responses = op.setdefault("responses", {})
            if "422" in responses and "HTTPValidationError" in str(responses["422"]):
                responses["422"] = _error("Invalid input; `param` names the field", {})
            applies = {"body": "requestBody" in op, "auth": bool(op.get("security"))}
            for status, (when, description, extra) in LAYER_RESPONSES.items():
                if applies[when] and status not in responses:
                    responses[status] = _error(description, extra)
                elif applies[when] and extra:
                    responses[status].update(extra)
            if method == "post":
                _add_links(schema, path, responses)
    if "/HTTPValidationError'" not in str(schema.get("paths")):  # FastAPI's 422 shape, now unused
        components = schema.get("components", {}).get("schemas", {})
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
    return schema


def _add_links(schema: dict[str, Any], created_at: str, responses: dict[str, Any]) -> None:
    """``POST /v1/jobs`` → every operation on ``/v1/jobs/{job_id}…`` whose only path parameter
    is that id: fed from the new object's ``id``."""
    created = responses.get("201")
    if created is None:
        return
    links = {}
    for path, operations in schema["paths"].items():
        if not path.startswith(created_at + "/{"):
            continue
        params = [p.strip("{}") for p in path.split("/") if p.startswith("{")]
        if len(params) != 1:
            continue
        for op in operations.values():
            if "operationId" in op:
                links[op["operationId"]] = {"operationId": op["operationId"],
                                            "parameters": {params[0]: "$response.body#/id"}}
    if links:
        for status in ("200", "201"):  # 200: an idempotent replay answers the same object
            if status in responses:
                responses[status]["links"] = links


def install_openapi(app: FastAPI) -> None:
    """Serve the completed document (built once, on first request, like FastAPI's own)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
