"""Operations features through the real HTTP surface (Postgres): retention, signed download links,
the dashboard's files, /metrics, and webhooks from job creation to a loopback receiver."""

from __future__ import annotations

import json
import logging
import time

from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.api.helpers import PRUNE, publish, set_status
from tests.service_fixtures import *  # noqa: F403
from tests.service_fixtures import auth

FILES = {"config.json": b'{"num_hidden_layers": 23}', "model.safetensors": b"\x00" * 4096}


def _job(client, headers, **extra) -> str:
    res = client.post("/v1/jobs", json={**PRUNE, **extra}, headers=headers)
    assert res.status_code == 201, res.text
    return res.json()["id"]


# ------------------------------------------------------------------ retention


def test_delete_removes_artifacts_of_a_finished_job(client, new_tenant, migrated_db, service_settings, tmp_path):
    from layerprune.db.models import Artifact, JobEvent

    tenant, headers = new_tenant
    job_id = _job(client, headers)
    res = client.delete(f"/v1/jobs/{job_id}", headers=headers)
    assert res.status_code == 409 and res.json()["error"]["code"] == "job_live"
    set_status(migrated_db, job_id, "running")
    assert client.delete(f"/v1/jobs/{job_id}", headers=headers).status_code == 409

    publish(migrated_db, service_settings, tenant, job_id, FILES, tmp_path)
    stored = service_settings.effective_storage_dir / tenant / job_id
    assert (stored / "model.safetensors").is_file()
    assert client.delete(f"/v1/jobs/{job_id}", headers=auth("not-a-key")).status_code == 401

    res = client.delete(f"/v1/jobs/{job_id}", headers=headers)
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["status"] == "succeeded" and body["result"]["artifacts"] == []
    assert body["result"]["artifacts_deleted_at"]
    assert not stored.exists()
    from layerprune.db.session import session_scope

    with session_scope(migrated_db) as s:
        assert s.scalars(select(Artifact).where(Artifact.job_id == job_id)).all() == []
        evt = s.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type == "artifact")
                        .order_by(JobEvent.seq.desc())).first()
        assert evt.data["deleted"] is True and evt.data["count"] == 2
    assert client.get(f"/v1/jobs/{job_id}/artifacts", headers=headers).json() == []
    assert client.get(f"/v1/jobs/{job_id}", headers=headers).status_code == 200  # the record stays
    assert client.delete(f"/v1/jobs/{job_id}", headers=headers).status_code == 200  # idempotent


def test_delete_is_tenant_scoped(client, new_tenant, migrated_db):
    _, headers_a = new_tenant
    job_id = _job(client, headers_a)
    set_status(migrated_db, job_id, "failed")
    from layerprune.db.keys import add_key
    from layerprune.db.session import session_scope

    with session_scope(migrated_db) as s:
        other_key = add_key(s, "t-other-delete")
    res = client.delete(f"/v1/jobs/{job_id}", headers=auth(other_key))
    assert res.status_code == 404 and res.json()["error"]["code"] == "not_found"
    assert client.delete("/v1/jobs/job_doesnotexist", headers=headers_a).status_code == 404


# ------------------------------------------------------------------ signed download links


def test_download_links(client, new_tenant, migrated_db, service_settings, tmp_path, caplog):
    from layerprune.api.routes.dashboard import read_token
    from layerprune.db.keys import add_key
    from layerprune.db.models import ApiKey
    from layerprune.db.session import session_scope

    tenant, headers = new_tenant
    job_id = _job(client, headers)
    publish(migrated_db, service_settings, tenant, job_id, FILES, tmp_path)
    res = client.post("/v1/download-links", json={"job_id": job_id, "path": "model.safetensors"}, headers=headers)
    assert res.status_code == 201, res.text
    url = res.json()["url"]
    with caplog.at_level(logging.INFO):
        got = client.get(url)  # no Authorization header
    assert got.status_code == 200 and got.content == FILES["model.safetensors"]
    assert 'filename="model.safetensors"' in got.headers["content-disposition"]

    token = url.rsplit("/", 1)[1]
    # The request is logged, the token (a bearer credential until it expires) is not.
    logged = [r for r in caplog.records if r.getMessage() == "request"]
    assert any(getattr(r, "path", "") == "/dashboard/download/<token>" for r in logged)
    # (The test client's own request log, httpx's, is the caller's side and is left out.)
    leaked = [r for r in caplog.records
              if not r.name.startswith("httpx") and token in json.dumps(vars(r), default=str)]
    assert not leaked, [(r.name, r.getMessage()) for r in leaked]
    payload, sig = token.split(".")
    forged = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB") + "." + sig
    assert client.get(f"/dashboard/download/{forged}").status_code == 404
    assert client.get("/dashboard/download/garbage").status_code == 404
    with session_scope(migrated_db) as s:
        assert read_token(s, token) is not None
        assert read_token(s, token, now=time.time() + service_settings.download_token_seconds + 5) is None

    # unknown path, and another tenant's job: 404 (never 403)
    assert client.post("/v1/download-links", json={"job_id": job_id, "path": "nope.bin"},
                       headers=headers).status_code == 404
    with session_scope(migrated_db) as s:
        other_key = add_key(s, "t-other-links")
    assert client.post("/v1/download-links", json={"job_id": job_id, "path": "config.json"},
                       headers=auth(other_key)).status_code == 404
    assert client.post("/v1/download-links", json={"job_id": job_id, "path": "config.json"}).status_code == 401

    # revoking the key revokes its links
    with session_scope(migrated_db) as s:
        for row in s.scalars(select(ApiKey).where(ApiKey.tenant == tenant)):
            row.revoked_at = row.created_at
    assert client.get(url).status_code == 404


# ------------------------------------------------------------------ dashboard files, metrics, OpenAPI


def test_dashboard_files_and_metrics(client):
    page = client.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "/dashboard/assets/dashboard.js" in page.text and "http" not in page.text.split("<body>")[1]
    assert client.get("/dashboard/assets/dashboard.js").status_code == 200
    assert client.get("/dashboard/assets/dashboard.css").status_code == 200
    assert client.get("/dashboard/assets/dashboard.html").status_code == 404
    assert client.get("/dashboard/assets/..%2Fapp.py").status_code == 404
    text = client.get("/metrics").text
    assert "layerprune_jobs{status=\"queued\"}" in text
    assert "layerprune_http_requests_total{method=\"GET\",route=\"/dashboard\",status=\"200\"}" in text
    spec = client.get("/openapi.json").json()
    assert "delete" in spec["paths"]["/v1/jobs/{job_id}"]
    assert "/v1/download-links" in spec["paths"] and "/metrics" in spec["paths"]


# ------------------------------------------------------------------ webhooks through the API


def test_webhook_from_api_cancel_to_receiver(service_settings, migrated_db, new_tenant, receiver):
    from layerprune.api.app import create_app
    from layerprune.db.models import WebhookDelivery
    from layerprune.db.session import session_factory
    from layerprune.webhooks import deliver_due, verify

    _, headers = new_tenant
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    strict = create_app(service_settings, start_background=False)
    with TestClient(strict) as c:  # loopback not allowed: refused at creation, naming the field
        res = c.post("/v1/jobs", json={**PRUNE, "webhook": {"url": receiver.url}}, headers=headers)
        assert res.status_code == 422 and res.json()["error"]["param"] == "webhook.url"
        res = c.post("/v1/jobs", json={**PRUNE, "webhook": {"url": "http://169.254.169.254/x"}}, headers=headers)
        assert res.status_code == 422

    settings = service_settings.model_copy(update={"webhook_allowed_hosts": "127.0.0.1"})
    with TestClient(create_app(settings, start_background=False)) as c:
        job_id = _job(c, headers, webhook={"url": receiver.url, "secret": secret})
        assert c.post(f"/v1/jobs/{job_id}/cancel", headers=headers).json()["status"] == "cancelled"
        sessions = session_factory(migrated_db)
        deadline = time.monotonic() + 10
        while not receiver.requests and time.monotonic() < deadline:
            deliver_due(sessions, settings=settings)
            time.sleep(0.05)
        (req,) = receiver.requests
        assert verify(secret, req.headers, req.body)
        assert req.json["type"] == "job.cancelled" and req.json["data"]["id"] == job_id
        assert req.json["data"]["status"] == "cancelled"
        with sessions() as s:
            row = s.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)).one()
            assert row.status == "delivered"
        events = c.get(f"/v1/jobs/{job_id}/events", headers=headers).json()["data"]
        hook_events = [e for e in events if e["type"] == "webhook"]
        assert hook_events and hook_events[-1]["data"]["outcome"] == "delivered"
