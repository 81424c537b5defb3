"""api.openapi: the served document lists the answers that come from layers around the routes.

- every operation with a body: 400 (undecodable), 408 (body timeout), 413 (body limit), and 422 in
  our error shape (FastAPI's ``HTTPValidationError`` appears nowhere);
- every operation that takes an API key: 401, and 429 with a required ``Retry-After``;
- operations without those (``/healthz``) do not claim them;
- links from ``POST /v1/jobs`` and ``POST /v1/files`` to the operations that take the new id.
The real app's document is checked (built without a database), and ``complete`` on a small app
for the cases the real one does not have.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from fastapi import Depends, FastAPI
from fastapi.security import HTTPBearer
from pydantic import BaseModel

from layerprune.api.openapi import complete, install_openapi

BODY_STATUSES = {"400", "408", "413", "422"}
AUTH_STATUSES = {"401", "429"}
METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture(scope="module")
def doc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from layerprune.api.app import create_app
    from layerprune.settings import Settings

    settings = Settings(data_dir=tmp_path_factory.mktemp("openapi"), key_secret="s" * 32)
    return create_app(settings, start_background=False).openapi()


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, ops in doc["paths"].items() for method, op in ops.items() if method in METHODS]


def test_operations_with_a_body_list_the_body_layers_answers(doc: dict[str, Any]) -> None:
    with_body = [(p, m, op) for p, m, op in operations(doc) if "requestBody" in op]
    assert {("/v1/jobs", "post"), ("/v1/files", "post")} <= {(p, m) for p, m, _ in with_body}
    for path, method, op in with_body:
        missing = BODY_STATUSES - set(op["responses"])
        assert not missing, f"{method.upper()} {path} lacks {missing}"
        for status in BODY_STATUSES:
            schema = op["responses"][status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorPublic"}, (path, status)


def test_operations_taking_a_key_list_401_and_429_with_retry_after(doc: dict[str, Any]) -> None:
    secured = [(p, m, op) for p, m, op in operations(doc) if op.get("security")]
    assert len(secured) >= 8
    for path, method, op in secured:
        assert AUTH_STATUSES <= set(op["responses"]), f"{method.upper()} {path}"
        retry = op["responses"]["429"]["headers"]["Retry-After"]
        assert retry["required"] is True and retry["schema"] == {"type": "integer", "minimum": 1}


def test_operations_without_body_or_key_do_not_claim_those_answers(doc: dict[str, Any]) -> None:
    health = doc["paths"]["/healthz"]["get"]
    assert not (BODY_STATUSES | AUTH_STATUSES) & set(health["responses"])
    for path, method, op in operations(doc):
        if "requestBody" not in op:
            assert not {"400", "408", "413"} & set(op["responses"]), f"{method.upper()} {path}"


def test_fastapis_validation_error_shape_is_gone(doc: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in str(doc)
    schemas = doc["components"]["schemas"]
    assert "ValidationError" not in schemas and "ErrorPublic" in schemas
    for _, _, op in operations(doc):
        if "422" in op["responses"]:
            assert op["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorPublic")


def test_created_objects_link_to_the_operations_taking_their_id(doc: dict[str, Any]) -> None:
    created = doc["paths"]["/v1/jobs"]["post"]["responses"]
    links = created["201"]["links"]
    assert created["200"]["links"] == links  # an idempotent replay answers the same object
    ids_taken = {op["operationId"] for path, _, op in operations(doc)
                 if path.startswith("/v1/jobs/{job_id}") and path.count("{") == 1}
    assert set(links) == ids_taken and links
    for link in links.values():
        assert link["parameters"] == {"job_id": "$response.body#/id"}
    # The artifact path operation takes two ids: the new job's alone cannot fill it.
    two = doc["paths"]["/v1/jobs/{job_id}/artifacts/{path}"]["get"]["operationId"]
    assert two not in links
    file_links = doc["paths"]["/v1/files"]["post"]["responses"]["201"]["links"]
    assert all(link["parameters"] == {"file_id": "$response.body#/id"} for link in file_links.values())


# ------------------------------------------------------------------ complete() on a small app


class Thing(BaseModel):
    name: str


def small_app() -> FastAPI:
    app = FastAPI()
    bearer = HTTPBearer(auto_error=False)

    @app.post("/things", status_code=201, dependencies=[Depends(bearer)],
              responses={413: {"description": "Our own words for 413"},
                         429: {"description": "Our own words for 429"}})
    def create(thing: Thing) -> dict[str, str]:
        return {"id": "t1"}

    @app.get("/things/{thing_id}")
    def read(thing_id: str) -> dict[str, str]:
        return {"id": thing_id}

    @app.post("/plain")
    def plain() -> dict[str, str]:  # a POST without 201: no links
        return {}

    install_openapi(app)
    return app


def test_complete_keeps_what_a_route_declares_and_adds_what_it_lacks() -> None:
    doc = small_app().openapi()
    responses = doc["paths"]["/things"]["post"]["responses"]
    assert responses["413"]["description"] == "Our own words for 413"
    # The route's own 429 still gets the header the limiter sends.
    assert responses["429"]["description"] == "Our own words for 429"
    assert responses["429"]["headers"]["Retry-After"]["required"] is True
    assert {"400", "401", "408", "422"} <= set(responses)
    assert responses["201"]["links"] == {"read_things__thing_id__get": {
        "operationId": "read_things__thing_id__get", "parameters": {"thing_id": "$response.body#/id"}}}
    assert "links" not in doc["paths"]["/plain"]["post"]["responses"]["200"]
    # A route with a path parameter but no body and no key: only its 422, in our shape.
    read = doc["paths"]["/things/{thing_id}"]["get"]["responses"]
    assert set(read) == {"200", "422"}
    assert "HTTPValidationError" not in str(doc)


def test_the_document_is_built_once_and_completing_again_changes_nothing() -> None:
    app = small_app()
    first = app.openapi()
    assert app.openapi() is first
    assert complete(copy.deepcopy(first)) == first
