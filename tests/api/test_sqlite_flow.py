"""The embedded default (SQLite, filesystem broker, local storage): the basic flow end to end."""

from __future__ import annotations

import pytest

from tests.api.helpers import PRUNE, publish, set_status
from tests.service_fixtures import service_env


@pytest.fixture(scope="module")
def sqlite_client(tmp_path_factory):
    from fastapi.testclient import TestClient

    from layerprune.api.app import create_app
    from layerprune.db.session import dispose_engines
    from layerprune.settings import get_settings

    data = tmp_path_factory.mktemp("lp-sqlite")
    with service_env(data_dir=data, database_url=None, broker_url=None, storage_dir=None,
                     api_keys="solo:solo-key", auto_migrate="1", cuda_workers="false",
                     dispatch_interval_seconds="0.3", reaper_interval_seconds="0.3"):
        settings = get_settings()
        assert settings.effective_database_url.startswith("sqlite")
        with TestClient(create_app(settings)) as c:  # with the housekeeping thread, as in production
            yield c, settings
    dispose_engines()


def test_basic_flow_on_sqlite(sqlite_client, tmp_path):
    c, settings = sqlite_client
    h = {"Authorization": "Bearer solo-key"}
    url = settings.effective_database_url
    assert c.get("/readyz").json()["checks"] == {"database": "ok", "migrations": "ok", "broker": "ok"}

    f = c.post("/v1/files", files={"file": ("t.jsonl", b'{"instruction": "a", "output": "b"}\n')},
               data={"purpose": "finetune"}, headers=h)
    assert f.status_code == 201
    spec = {**PRUNE, "finetune": {"dataset": f.json()["id"], "max_steps": 2}, "metadata": {"run": "1"}}
    r = c.post("/v1/jobs", json=spec, headers={**h, "Idempotency-Key": "k1"})
    assert r.status_code == 201 and r.json()["queue"] == "gpu"
    job_id = r.json()["id"]
    assert c.post("/v1/jobs", json=spec, headers={**h, "Idempotency-Key": "k1"}).json()["id"] == job_id
    assert c.post("/v1/jobs", json=PRUNE, headers={**h, "Idempotency-Key": "k1"}).status_code == 409
    queued = c.post("/v1/jobs", json=PRUNE, headers=h).json()["id"]

    page = c.get("/v1/jobs", params={"limit": 1}, headers=h).json()
    assert [j["id"] for j in page["data"]] == [queued] and page["has_more"]
    assert [j["id"] for j in c.get("/v1/jobs?metadata[run]=1", headers=h).json()["data"]] == [job_id]
    types = [e["type"] for e in c.get(f"/v1/jobs/{job_id}/events", headers=h).json()["data"]]
    # Sent at POST time; the housekeeping sweep may send it once more (harmless: claims are atomic).
    assert types[0] == "created" and set(types[1:]) == {"dispatched"}

    assert c.post(f"/v1/jobs/{queued}/cancel", headers=h).json()["status"] == "cancelled"
    assert c.post(f"/v1/jobs/{queued}/cancel", headers=h).status_code == 409
    assert c.delete(f"/v1/files/{f.json()['id']}", headers=h).status_code == 409

    set_status(url, job_id, "running", attempts=1)
    publish(url, settings, "solo", job_id, {"config.json": b'{"a": 1}', "w.bin": b"0123456789"}, tmp_path)
    assert c.get(f"/v1/jobs/{job_id}", headers=h).json()["status"] == "succeeded"
    r = c.get(f"/v1/jobs/{job_id}/artifacts/w.bin", headers={**h, "Range": "bytes=2-4"})
    assert r.status_code == 206 and r.content == b"234"
    assert len(c.get(f"/v1/jobs/{job_id}/artifacts.tar", headers=h).content) % 10240 == 0
    assert c.delete(f"/v1/files/{f.json()['id']}", headers=h).status_code == 200
    assert c.get(f"/v1/jobs/{job_id}", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_housekeeping_reaps_expired_leases_and_redispatches(sqlite_client):
    import time
    from datetime import timedelta

    from layerprune.db.models import utcnow

    c, settings = sqlite_client
    h = {"Authorization": "Bearer solo-key"}
    job_id = c.post("/v1/jobs", json=PRUNE, headers=h).json()["id"]
    # A worker claimed it and died: its lease ran out a minute ago.
    set_status(settings.effective_database_url, job_id, "running", attempts=1, worker_id="dead-worker",
               lease_expires_at=utcnow() - timedelta(seconds=60))
    deadline = time.monotonic() + 20
    types: list[str] = []
    while time.monotonic() < deadline:
        types = [e["type"] for e in c.get(f"/v1/jobs/{job_id}/events", headers=h).json()["data"]]
        if "retry" in types and "dispatched" in types[types.index("retry"):]:
            break
        time.sleep(0.2)
    assert types[0] == "created" and "retry" in types, types
    assert "dispatched" in types[types.index("retry"):], types  # re-sent by the outbox sweep
    job = c.get(f"/v1/jobs/{job_id}", headers=h).json()
    assert job["status"] == "queued" and job["attempts"] == 1
