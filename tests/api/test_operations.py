"""/healthz, /readyz, the OpenAPI document, 503 while the database is away, and the outbox."""

from __future__ import annotations

import time

from layerprune.db.ids import JOB, new_id
from tests.api.helpers import PRUNE
from tests.api.tcp_proxy import TcpProxy
from tests.service_fixtures import TENANT_A_KEY, auth, service_env

# A job id of the real shape that names no job: it reaches the database (an impossible id is 404 before).
GHOST_JOB = new_id(JOB)


def test_healthz_and_readyz(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ok", "checks": {"database": "ok", "migrations": "ok", "broker": "ok"}}


def test_readyz_names_migrations_behind(service_settings, tmp_path):
    from fastapi.testclient import TestClient

    from layerprune.api.app import create_app

    url = f"sqlite:///{tmp_path / 'empty.db'}"
    app = create_app(service_settings.model_copy(update={"database_url": url, "auto_migrate": False}),
                     start_background=False)
    with TestClient(app) as c:
        r = c.get("/readyz")
        assert r.status_code == 503
        assert r.json()["checks"]["migrations"].startswith("behind") and "migrations" in r.json()["error"]["message"]


def test_broker_down_job_still_accepted_then_dispatched_by_the_outbox(client, new_tenant, app):
    from layerprune.queue.outbox import dispatch_pending

    _, h = new_tenant
    with service_env(broker_url="redis://127.0.0.1:1/0"):
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["checks"]["broker"] == "down"
        assert "broker" in r.json()["error"]["message"]
        started = time.monotonic()
        r = client.post("/v1/jobs", json=PRUNE, headers=h)
        assert r.status_code == 201 and time.monotonic() - started < 15
        job_id = r.json()["id"]
        types = [e["type"] for e in client.get(f"/v1/jobs/{job_id}/events", headers=h).json()["data"]]
        assert types == ["created"]  # not sent: waiting in the outbox
    # The broker is back (the embedded transport): the sweep sends it.
    assert dispatch_pending(app.state.session_factory) >= 1
    types = [e["type"] for e in client.get(f"/v1/jobs/{job_id}/events", headers=h).json()["data"]]
    assert types == ["created", "dispatched"]


def test_database_down_is_503_and_recovers(service_settings, pg_url):
    from fastapi.testclient import TestClient

    from layerprune.api.app import create_app

    proxy = TcpProxy(("127.0.0.1", 5432)).start()
    db = pg_url.rsplit("/", 1)[1]
    url = f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/{db}"
    app = create_app(service_settings.model_copy(update={"database_url": url}), start_background=False)
    h = auth(TENANT_A_KEY)
    try:
        with TestClient(app) as c:
            assert c.get("/v1/jobs", headers=h).status_code == 200
            proxy.stop()
            for method, path in [("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", f"/v1/jobs/{GHOST_JOB}"),
                                 ("GET", "/v1/files"), ("GET", f"/v1/jobs/{GHOST_JOB}/events")]:
                r = c.request(method, path, headers=h, json=PRUNE if method == "POST" else None)
                assert r.status_code == 503, (method, path, r.text)
                assert r.json()["error"]["code"] == "database_unavailable"
            r = c.get("/readyz")
            assert r.status_code == 503 and r.json()["checks"]["database"].startswith("down")
            assert c.get("/healthz").status_code == 200
            proxy.start()  # same port: the database is back
            assert c.get("/v1/jobs", headers=h).status_code == 200
            r = c.post("/v1/jobs", json=PRUNE, headers=h)
            assert r.status_code == 201
            assert c.get("/readyz").status_code == 200
    finally:
        proxy.stop()


def test_app_starts_while_database_is_down(service_settings):
    from fastapi.testclient import TestClient

    from layerprune.api.app import create_app

    url = "postgresql+psycopg://postgres@127.0.0.1:1/nothing"
    app = create_app(service_settings.model_copy(update={"database_url": url}), start_background=False)
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/v1/jobs", headers=auth(TENANT_A_KEY))
        assert r.status_code == 503 and r.json()["error"]["code"] == "database_unavailable"


def test_openapi_document_matches_the_service(client, new_tenant):
    doc = client.get("/openapi.json").json()
    paths = doc["paths"]
    expected = {
        "/v1/jobs": {"get", "post"}, "/v1/jobs/{job_id}": {"get"}, "/v1/jobs/{job_id}/cancel": {"post"},
        "/v1/jobs/{job_id}/events": {"get"}, "/v1/jobs/{job_id}/artifacts": {"get"},
        "/v1/jobs/{job_id}/artifacts/{path}": {"get"}, "/v1/jobs/{job_id}/artifacts.tar": {"get"},
        "/v1/files": {"get", "post"}, "/v1/files/{file_id}": {"get", "delete"},
        "/healthz": {"get"}, "/readyz": {"get"}, "/metrics": {"get"},
    }
    for path, methods in expected.items():
        assert methods <= set(paths[path]), path
    create = paths["/v1/jobs"]["post"]
    assert {"201", "200", "409", "413", "422", "401"} <= set(create["responses"])
    body = create["requestBody"]["content"]["application/json"]
    assert body["schema"]["$ref"].endswith("/JobSpec") and "paper_recipe" in body["examples"]
    assert "multipart/form-data" in paths["/v1/files"]["post"]["requestBody"]["content"]
    assert any("HTTPBearer" in k for k in doc["components"]["securitySchemes"])
    schemas = doc["components"]["schemas"]
    # Every documented example of the spec is accepted by the service as it is.
    _, h = new_tenant
    for name, ex in body["examples"].items():
        r = client.post("/v1/jobs", json=ex["value"], headers=h)
        assert r.status_code in (201, 422), name
        if r.status_code == 422:  # only the uploaded-file/webhook parts may be environment-specific
            raise AssertionError((name, r.json()))
    # Responses carry exactly the documented fields.
    job = client.get("/v1/jobs", headers=h).json()["data"][0]
    assert set(job) == set(schemas["JobPublic"]["properties"])
    assert set(schemas["JobPublic"]["required"]) <= set(job)
    assert schemas["JobPublic"]["examples"]
    assert set(schemas["ErrorDetail"]["properties"]) == {"code", "message", "param"}
    err = client.get("/v1/jobs/job_nope", headers=h).json()
    assert set(err) == {"error"} and set(err["error"]) == {"code", "message", "param"}
    assert "Bearer" in doc["info"]["description"]


def test_event_stream_survives_a_database_outage(service_settings, pg_url):
    import threading

    from fastapi.testclient import TestClient

    from layerprune.api.app import create_app
    from tests.api.routes.test_events import _add_events, _parse_sse

    proxy = TcpProxy(("127.0.0.1", 5432)).start()
    db = pg_url.rsplit("/", 1)[1]
    url = f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/{db}"
    app = create_app(service_settings.model_copy(update={"database_url": url}), start_background=False)
    h = auth(TENANT_A_KEY)
    chunks: list[str] = []
    try:
        with TestClient(app) as c:
            job_id = c.post("/v1/jobs", json=PRUNE, headers=h).json()["id"]

            def read():
                with c.stream("GET", f"/v1/jobs/{job_id}/events", headers={**h, "Accept": "text/event-stream"}) as r:
                    for text in r.iter_text():
                        chunks.append(text)

            reader = threading.Thread(target=read)
            reader.start()
            time.sleep(1.0)
            proxy.stop()  # the API loses its database mid-stream
            _add_events(pg_url, job_id, 2)  # the worker (direct connection) goes on
            time.sleep(3.0)
            assert reader.is_alive()  # the stream waits instead of failing
            proxy.start()
            _add_events(pg_url, job_id, 1, finish="succeeded")
            reader.join(timeout=30)
            assert not reader.is_alive()
    finally:
        proxy.stop()
    text = "".join(chunks)
    assert "database unavailable" in text
    types = [e["event"] for e in _parse_sse(text)]
    assert types.count("progress") == 3 and types[-2:] == ["state", "end"]


def test_openapi_document_is_valid_and_responses_validate(client, new_tenant):
    import pytest

    validator_mod = pytest.importorskip("openapi_spec_validator")
    jsonschema = pytest.importorskip("jsonschema")
    doc = client.get("/openapi.json").json()
    validator_mod.validate(doc)

    def check(name, instance):
        schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
        jsonschema.Draft202012Validator(schema).validate(instance)

    _, h = new_tenant
    job = client.post("/v1/jobs", json=PRUNE, headers=h).json()
    check("JobPublic", job)
    check("JobsPublic", client.get("/v1/jobs", headers=h).json())
    check("EventsPublic", client.get(f"/v1/jobs/{job['id']}/events", headers=h).json())
    listing = client.get(f"/v1/jobs/{job['id']}/artifacts", headers=h).json()
    assert isinstance(listing, list)
    for item in listing:
        check("ArtifactPublic", item)
    f = client.post("/v1/files", files={"file": ("a.txt", b"x")}, data={"purpose": "evaluate"}, headers=h).json()
    check("FilePublic", f)
    check("FilesPublic", client.get("/v1/files", headers=h).json())
    check("ErrorPublic", client.get("/v1/jobs/job_nope", headers=h).json())
    check("ErrorPublic", client.post("/v1/jobs", json={"prune": {"ratio": 2}}, headers=h).json())
    for schema_name in ("JobPublic", "EventPublic", "FilePublic", "ArtifactPublic"):
        for example in doc["components"]["schemas"][schema_name]["examples"]:
            check(schema_name, example)
