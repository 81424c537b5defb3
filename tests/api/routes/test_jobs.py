"""Jobs through HTTP: create, get, list with filters, cancel, idempotency, auth, body limit."""

from __future__ import annotations

import json

from tests.api.helpers import PRUNE, set_status
from tests.service_fixtures import TENANT_A_KEY, auth


def test_create_get_and_defaults(client, new_tenant):
    _, h = new_tenant
    r = client.post("/v1/jobs", json={**PRUNE, "metadata": {"pipeline": "nightly"}}, headers=h)
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["id"].startswith("job_") and job["object"] == "job"
    assert job["status"] == "queued" and job["stage"] is None and job["progress"] == 0.0
    assert job["attempts"] == 0 and job["metadata"] == {"pipeline": "nightly"}
    assert job["created_at"].endswith("Z") and job["started_at"] is None and job["finished_at"] is None
    # The stored spec is the accepted one, with every default filled in.
    assert job["spec"]["model"] == "bundled:smollm2-135m-instruct"
    assert job["spec"]["prune"]["calibration"]["num_samples"] == 10
    assert job["queue"] == "cpu"  # reverse order without healing needs no GPU
    got = client.get(f"/v1/jobs/{job['id']}", headers=h).json()
    assert got == {**job, "updated_at": got["updated_at"]}


def test_ids_are_random_not_sequential(client, new_tenant):
    _, h = new_tenant
    ids = [client.post("/v1/jobs", json=PRUNE, headers=h).json()["id"] for _ in range(3)]
    assert len(set(ids)) == 3
    assert all(len(i) == len("job_") + 24 for i in ids)


def test_gpu_routing(client, new_tenant):
    _, h = new_tenant
    r = client.post("/v1/jobs", json={**PRUNE, "finetune": {"method": "partial"}}, headers=h)
    assert r.status_code == 201 and r.json()["queue"] == "gpu"


def test_created_event_and_dispatch(client, new_tenant):
    _, h = new_tenant
    job = client.post("/v1/jobs", json=PRUNE, headers=h).json()
    types = [e["type"] for e in client.get(f"/v1/jobs/{job['id']}/events", headers=h).json()["data"]]
    assert types[0] == "created"
    assert "dispatched" in types  # the embedded filesystem broker accepted it


def test_list_newest_first_filters_and_cursor(client, new_tenant, migrated_db):
    _, h = new_tenant
    ids = [client.post("/v1/jobs", json={**PRUNE, "metadata": {"n": str(i), "team": "x" if i % 2 else "y"}},
                       headers=h).json()["id"] for i in range(5)]
    page = client.get("/v1/jobs", params={"limit": 2}, headers=h).json()
    assert page["object"] == "list" and page["has_more"] is True
    assert [j["id"] for j in page["data"]] == [ids[4], ids[3]] and page["last_id"] == ids[3]
    page2 = client.get("/v1/jobs", params={"limit": 2, "after": page["last_id"]}, headers=h).json()
    assert [j["id"] for j in page2["data"]] == [ids[2], ids[1]]
    page3 = client.get("/v1/jobs", params={"limit": 2, "after": page2["last_id"]}, headers=h).json()
    assert [j["id"] for j in page3["data"]] == [ids[0]] and page3["has_more"] is False
    assert client.get("/v1/jobs", headers=h).json()["has_more"] is False  # default limit 20

    team_x = client.get("/v1/jobs?metadata[team]=x", headers=h).json()["data"]
    assert [j["id"] for j in team_x] == [ids[3], ids[1]]
    both = client.get("/v1/jobs?metadata[team]=y&metadata[n]=2", headers=h).json()["data"]
    assert [j["id"] for j in both] == [ids[2]]
    set_status(migrated_db, ids[0], "failed", error={"code": "x", "message": "y"})
    failed = client.get("/v1/jobs", params={"status": "failed"}, headers=h).json()["data"]
    assert [j["id"] for j in failed] == [ids[0]] and failed[0]["error"] == {"code": "x", "message": "y"}


def test_list_parameter_errors(client, new_tenant):
    _, h = new_tenant
    for params, param in [({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"limit": "x"}, "limit"),
                          ({"status": "bogus"}, "status"), ({"after": "job_nope"}, "after")]:
        r = client.get("/v1/jobs", params=params, headers=h)
        assert r.status_code == 422, (params, r.text)
        assert r.json()["error"]["param"] == param


def test_cancel_queued_running_terminal(client, new_tenant, migrated_db):
    _, h = new_tenant
    queued = client.post("/v1/jobs", json=PRUNE, headers=h).json()["id"]
    r = client.post(f"/v1/jobs/{queued}/cancel", headers=h)
    assert r.status_code == 200 and r.json()["status"] == "cancelled" and r.json()["finished_at"]
    events = client.get(f"/v1/jobs/{queued}/events", headers=h).json()["data"]
    assert [e["type"] for e in events][-2:] == ["cancel_requested", "state"]
    assert events[-1]["data"] == {"status": "cancelled"}
    # terminal → 409, and it stays cancelled
    r = client.post(f"/v1/jobs/{queued}/cancel", headers=h)
    assert r.status_code == 409 and r.json()["error"]["code"] == "job_finished"
    assert client.get(f"/v1/jobs/{queued}", headers=h).json()["status"] == "cancelled"

    running = client.post("/v1/jobs", json=PRUNE, headers=h).json()["id"]
    set_status(migrated_db, running, "running", attempts=1, worker_id="w1")
    r = client.post(f"/v1/jobs/{running}/cancel", headers=h)
    assert r.status_code == 200 and r.json()["status"] == "cancelling" and r.json()["cancel_requested_at"]
    assert client.post(f"/v1/jobs/{running}/cancel", headers=h).json()["status"] == "cancelling"  # repeat: same
    for status in ("succeeded", "failed"):
        done = client.post("/v1/jobs", json=PRUNE, headers=h).json()["id"]
        set_status(migrated_db, done, status)
        assert client.post(f"/v1/jobs/{done}/cancel", headers=h).status_code == 409


def test_idempotency(client, new_tenant):
    _, h = new_tenant
    hk = {**h, "Idempotency-Key": "retrain-2026-11-28"}
    first = client.post("/v1/jobs", json=PRUNE, headers=hk)
    assert first.status_code == 201
    again = client.post("/v1/jobs", json=PRUNE, headers=hk)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    # Same meaning, other spelling (key order, explicit default): still the same request.
    same = json.dumps({"prune": {"ratio": 0.25, "metric": "reverse_order"}, "priority": 0})
    r = client.post("/v1/jobs", content=same, headers={**hk, "Content-Type": "application/json"})
    assert r.status_code == 200 and r.json()["id"] == first.json()["id"]
    other = client.post("/v1/jobs", json={"prune": {"metric": "reverse_order", "ratio": 0.5}}, headers=hk)
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
    assert len(client.get("/v1/jobs", headers=h).json()["data"]) == 1
    # Keys are per tenant: another tenant's same key is a new job.
    r = client.post("/v1/jobs", json=PRUNE, headers={**auth(TENANT_A_KEY), "Idempotency-Key": "retrain-2026-11-28"})
    assert r.status_code in (200, 201) and r.json()["id"] != first.json()["id"]


def test_idempotency_expires(client, new_tenant, migrated_db):
    from datetime import timedelta

    from sqlalchemy import update

    from layerprune.db.models import IdempotencyKey, utcnow
    from layerprune.db.session import session_scope

    tenant, h = new_tenant
    hk = {**h, "Idempotency-Key": "old"}
    first = client.post("/v1/jobs", json=PRUNE, headers=hk).json()["id"]
    with session_scope(migrated_db) as s:
        s.execute(update(IdempotencyKey).where(IdempotencyKey.tenant == tenant)
                  .values(created_at=utcnow() - timedelta(hours=25)))
    r = client.post("/v1/jobs", json=PRUNE, headers=hk)
    assert r.status_code == 201 and r.json()["id"] != first


def test_auth(client):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"},
                    {"Authorization": "Bearer "}):
        r = client.get("/v1/jobs", headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["WWW-Authenticate"] == "Bearer"
        assert r.json()["error"]["code"] == "unauthorized"
    assert client.post("/v1/jobs", json=PRUNE).status_code == 401
    assert client.post("/v1/files", files={"file": ("a.txt", b"x")}, data={"purpose": "evaluate"}).status_code == 401


def test_revoked_key(client, new_tenant, migrated_db, service_settings):
    import time

    from sqlalchemy import update

    from layerprune.db.models import ApiKey, utcnow
    from layerprune.db.session import session_scope

    tenant, h = new_tenant
    assert client.get("/v1/jobs", headers=h).status_code == 200
    with session_scope(migrated_db) as s:
        s.execute(update(ApiKey).where(ApiKey.tenant == tenant).values(revoked_at=utcnow()))
    # A verified key is remembered for LAYERPRUNE_API_KEY_CACHE_SECONDS (api/key_cache.py), no longer.
    deadline = time.monotonic() + service_settings.api_key_cache_seconds + 1
    while client.get("/v1/jobs", headers=h).status_code == 200:
        assert time.monotonic() < deadline, "a revoked key outlived the key cache"
        time.sleep(0.2)
    assert client.get("/v1/jobs", headers=h).status_code == 401


def test_keys_stored_hashed_and_bootstrap_idempotent(migrated_db, service_settings):
    from sqlalchemy import select

    from layerprune.db.keys import bootstrap_keys, hash_key
    from layerprune.db.models import ApiKey
    from layerprune.db.session import session_scope

    with session_scope(migrated_db) as s:
        assert bootstrap_keys(s, service_settings.bootstrap_keys) == 0  # the app already made them
        rows = s.scalars(select(ApiKey).where(ApiKey.tenant == "tenant-a")).all()
        assert [r.key_hash for r in rows] == [hash_key(TENANT_A_KEY)]
        assert all(TENANT_A_KEY not in (r.key_hash, r.name, r.id) for r in rows)


def test_body_limit(client, new_tenant):
    _, h = new_tenant
    big = {"prune": {"metric": "reverse_order"}, "metadata": {"blob": "x" * (1024 * 1024)}}
    r = client.post("/v1/jobs", json=big, headers=h)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"

    def chunks():  # no Content-Length: counted as it arrives and cut off
        for _ in range(20):
            yield b" " * (100 * 1024)
        yield json.dumps(PRUNE).encode()

    r = client.post("/v1/jobs", content=chunks(), headers={**h, "Content-Type": "application/json"})
    assert r.status_code == 413
    assert client.get("/v1/jobs", headers=h).json()["data"] == []


def test_malformed_bodies(client, new_tenant):
    _, h = new_tenant
    cases = [b"{", b"[]", b'"x"', b"null", b""]
    for body in cases:
        r = client.post("/v1/jobs", content=body, headers={**h, "Content-Type": "application/json"})
        assert r.status_code == 422, (body, r.text)
        assert set(r.json()["error"]) == {"code", "message", "param"}
    assert client.get("/v1/jobs", headers=h).json()["data"] == []


def test_unknown_route_and_method_use_error_shape(client, new_tenant):
    _, h = new_tenant
    r = client.get("/v1/nope", headers=h)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = client.delete("/v1/jobs", headers=h)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_concurrent_requests_with_one_idempotency_key_make_one_job(client, app, new_tenant):
    import threading

    from fastapi.testclient import TestClient

    _, h = new_tenant
    hk = {**h, "Idempotency-Key": "race"}
    results: list[tuple[int, str]] = []
    barrier = threading.Barrier(4)

    def post():
        with TestClient(app) as c:
            barrier.wait()
            r = c.post("/v1/jobs", json=PRUNE, headers=hk)
            results.append((r.status_code, r.json()["id"]))

    threads = [threading.Thread(target=post) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(code for code, _ in results) == [200, 200, 200, 201]
    assert len({job_id for _, job_id in results}) == 1
    assert len(client.get("/v1/jobs", headers=h).json()["data"]) == 1


def test_webhook_secret_is_never_echoed():
    # A secret goes in once; the job object (API answers and webhook bodies) masks it.
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from layerprune.api.schemas import JobPublic

    now = datetime.now(UTC)
    spec = {**PRUNE, "webhook": {"url": "https://hooks.example/h", "secret": "whsec_c2VjcmV0"}}
    row = SimpleNamespace(id="job_x", status="queued", stage=None, progress=0.0, created_at=now, updated_at=now,
                          started_at=None, finished_at=None, cancel_requested_at=None, spec=spec, result=None,
                          error=None, attempts=0, max_attempts=3, metadata_={}, priority=0, queue="cpu")
    out = JobPublic.from_row(row)  # type: ignore[arg-type]
    assert out.spec["webhook"] == {"url": "https://hooks.example/h", "secret": "***"}
    assert spec["webhook"]["secret"] == "whsec_c2VjcmV0"  # the stored spec is untouched
