"""A tenant never sees another tenant's objects: every route answers 404, never 403."""

from __future__ import annotations

from tests.api.helpers import PRUNE, publish


def test_other_tenant_ids_are_404_everywhere(client, new_tenant, migrated_db, service_settings, tmp_path):
    from layerprune.db.keys import add_key
    from layerprune.db.session import session_scope

    owner, h_owner = new_tenant
    with session_scope(migrated_db) as s:
        h_other = {"Authorization": f"Bearer {add_key(s, owner + '-other')}"}

    job = client.post("/v1/jobs", json=PRUNE, headers=h_owner).json()["id"]
    done = client.post("/v1/jobs", json=PRUNE, headers=h_owner).json()["id"]
    publish(migrated_db, service_settings, owner, done, {"config.json": b"{}"}, tmp_path)
    f = client.post("/v1/files", files={"file": ("a.txt", b"hello")}, data={"purpose": "evaluate"},
                    headers=h_owner).json()["id"]
    evt = client.get(f"/v1/jobs/{job}/events", headers=h_owner).json()["data"][0]["id"]

    routes = [
        ("GET", f"/v1/jobs/{job}"), ("POST", f"/v1/jobs/{job}/cancel"), ("GET", f"/v1/jobs/{job}/events"),
        ("GET", f"/v1/jobs/{done}/artifacts"), ("GET", f"/v1/jobs/{done}/artifacts/config.json"),
        ("GET", f"/v1/jobs/{done}/artifacts.tar"), ("GET", f"/v1/files/{f}"), ("DELETE", f"/v1/files/{f}"),
    ]
    for method, url in routes:
        r = client.request(method, url, headers=h_other)
        assert r.status_code == 404, (method, url, r.status_code)
        assert r.json()["error"]["code"] == "not_found"
    r = client.get(f"/v1/jobs/{job}/events", headers={**h_other, "Accept": "text/event-stream"})
    assert r.status_code == 404
    # Lists and cursors show nothing of the owner's.
    assert client.get("/v1/jobs", headers=h_other).json()["data"] == []
    assert client.get("/v1/files", headers=h_other).json()["data"] == []
    assert client.get("/v1/jobs", params={"after": job}, headers=h_other).status_code == 422
    assert client.get(f"/v1/jobs/{job}/events", params={"after": evt}, headers=h_other).status_code == 404
    # Specs cannot reach the owner's objects either.
    r = client.post("/v1/jobs", json={**PRUNE, "model": f"job:{done}"}, headers=h_other)
    assert r.status_code == 422 and r.json()["error"]["param"] == "model"
    r = client.post("/v1/jobs", json={**PRUNE, "evaluate": {"perplexity": {"dataset": f}}}, headers=h_other)
    assert r.status_code == 422 and r.json()["error"]["param"] == "evaluate.perplexity.dataset"
    # And the owner's objects are untouched.
    assert client.get(f"/v1/jobs/{job}", headers=h_owner).json()["status"] == "queued"
    assert client.get(f"/v1/files/{f}", headers=h_owner).status_code == 200
