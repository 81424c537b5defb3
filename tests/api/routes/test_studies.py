"""``/v1/studies`` through the real HTTP surface on Postgres: validation, tenancy, idempotency,
cancel, and the study's jobs being ordinary jobs (no worker: the jobs stay queued)."""

from __future__ import annotations

import pytest

EVALUATE = {"perplexity": {"max_windows": 2}, "tasks": ["arc_easy"], "limit": 10}
STUDY = {"model": "bundled:smollm2-135m-instruct",
         "axes": {"metrics": ["block_influence", "taylor", "magnitude_l2"], "ratios": [0.25, 0.5]},
         "prune": {"calibration": {"num_samples": 2, "seq_len": 32}},
         "evaluate": EVALUATE}


def test_create_get_list_and_jobs_are_ordinary(client, new_tenant):
    _, h = new_tenant
    r = client.post("/v1/studies", json={**STUDY, "metadata": {"team": "a"}}, headers=h)
    assert r.status_code == 201, r.text
    study = r.json()
    assert study["object"] == "study" and study["id"].startswith("study_") and study["status"] == "queued"
    assert study["progress"] == {"done": 0, "total": 6}
    assert study["quality"] == {"name": "mean_acc", "higher_is_better": True}
    assert [c["label"] for c in study["candidates"]][:2] == ["block_influence · 25%", "block_influence · 50%"]
    assert study["candidates"][0]["recipe"] == {"metric": "block_influence", "num_layers": None, "ratio": 0.25,
                                                "replace": "none", "heal": None}
    assert study["baseline"]["job_id"].startswith("job_") and study["baseline"]["status"] == "queued"
    assert study["pareto"] == {"params": [], "speed": []} and study["recommendation"] is None
    assert study["metadata"] == {"team": "a"} and study["finished_at"] is None
    # Each candidate is a job like any other, visible and filterable on /v1/jobs.
    job = client.get(f"/v1/jobs/{study['candidates'][0]['job_id']}", headers=h).json()
    assert job["spec"]["prune"]["metric"] == "block_influence" and job["spec"]["evaluate"]["compare_base"]
    assert job["metadata"] == {"team": "a", "study_id": study["id"], "study_role": "candidate"}
    listed = client.get(f"/v1/jobs?metadata[study_id]={study['id']}", headers=h).json()["data"]
    assert len(listed) == 7
    assert client.get(f"/v1/studies/{study['id']}", headers=h).json()["id"] == study["id"]
    page = client.get("/v1/studies", params={"limit": 1}, headers=h).json()
    assert page["object"] == "list" and [s["id"] for s in page["data"]] == [study["id"]]
    client.post(f"/v1/studies/{study['id']}/cancel", headers=h)


def test_cancel_cancels_every_job(client, new_tenant):
    _, h = new_tenant
    study = client.post("/v1/studies", json=STUDY, headers=h).json()
    r = client.post(f"/v1/studies/{study['id']}/cancel", headers=h)
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "cancelled" and body["finished_at"] is not None
    assert {c["status"] for c in body["candidates"]} == {"cancelled"} and body["baseline"]["status"] == "cancelled"
    assert client.post(f"/v1/studies/{study['id']}/cancel", headers=h).status_code == 409


def test_other_tenants_study_is_404(client, new_tenant, migrated_db):
    from layerprune.db.keys import add_key
    from layerprune.db.session import session_scope

    owner, h = new_tenant
    with session_scope(migrated_db) as s:
        other = {"Authorization": f"Bearer {add_key(s, owner + '-other')}"}
    sid = client.post("/v1/studies", json=STUDY, headers=h).json()["id"]
    for method, url in (("GET", f"/v1/studies/{sid}"), ("POST", f"/v1/studies/{sid}/cancel")):
        assert client.request(method, url, headers=other).status_code == 404
    assert client.get("/v1/studies", headers=other).json()["data"] == []
    assert client.get("/v1/studies/study_nope", headers=h).status_code == 404
    client.post(f"/v1/studies/{sid}/cancel", headers=h)


def test_idempotency(client, new_tenant):
    _, h = new_tenant
    hk = {**h, "Idempotency-Key": "study-key-1"}
    first = client.post("/v1/studies", json=STUDY, headers=hk)
    again = client.post("/v1/studies", json=STUDY, headers=hk)
    assert first.status_code == 201 and again.status_code == 200 and again.json()["id"] == first.json()["id"]
    other = client.post("/v1/studies", json={**STUDY, "priority": 3}, headers=hk)
    assert other.status_code == 409 and other.json()["error"]["param"] == "Idempotency-Key"
    client.post(f"/v1/studies/{first.json()['id']}/cancel", headers=h)



def test_concurrent_requests_with_one_idempotency_key_make_one_study(client, app, new_tenant):
    # The same race as for jobs, through the same api.idempotent.create_once: one study, one set
    # of candidate jobs, and the losers answered 200 with the winner's study (never a 500).
    import threading

    from fastapi.testclient import TestClient

    _, h = new_tenant
    hk = {**h, "Idempotency-Key": "study-race"}
    results: list[tuple[int, str]] = []
    barrier = threading.Barrier(3)

    def post():
        with TestClient(app) as c:
            barrier.wait()
            r = c.post("/v1/studies", json=STUDY, headers=hk)
            results.append((r.status_code, r.json().get("id")))

    threads = [threading.Thread(target=post) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(code for code, _ in results) == [200, 200, 201]
    assert len({sid for _, sid in results}) == 1
    studies = client.get("/v1/studies", headers=h).json()["data"]
    assert [s["id"] for s in studies] == [results[0][1]]
    jobs = client.get("/v1/jobs", headers=h).json()["data"]
    assert len(jobs) == len(studies[0]["candidates"]) + 1  # the candidates and the one baseline
    client.post(f"/v1/studies/{studies[0]['id']}/cancel", headers=h)

BAD = [
    ({**STUDY, "axes": {**STUDY["axes"], "metrics": ["taylor", "angular", "bogus"]}}, "axes.metrics[2]"),
    ({**STUDY, "axes": {**STUDY["axes"], "metrics": ["taylor", "taylor"]}}, "axes.metrics[1]"),
    ({**STUDY, "axes": {**STUDY["axes"], "ratios": [0.25, 1.5]}}, "axes.ratios[1]"),
    # 0.01 of 30 layers removes none: refused by the job validation, reported at the axis value.
    ({**STUDY, "axes": {**STUDY["axes"], "ratios": [0.25, 0.01]}}, "axes.ratios[1]"),
    ({**STUDY, "axes": {"metrics": ["taylor"], "num_layers": [4, 40]}}, "axes.num_layers[1]"),
    ({**STUDY, "axes": {"metrics": ["taylor"], "ratios": [0.25], "num_layers": [4]}}, "axes.ratios"),
    ({**STUDY, "axes": {**STUDY["axes"], "heal_methods": ["partial", "magic"]}}, "axes.heal_methods[1]"),
    ({**STUDY, "prune": {"metric": "taylor"}}, "prune.metric"),
    ({**STUDY, "prune": {"calibration": {"num_samples": 0}}}, "prune.calibration.num_samples"),
    ({**STUDY, "evaluate": {"tasks": ["nope"]}}, "evaluate.tasks[0]"),
    ({**STUDY, "evaluate": {"speed": True}}, "evaluate"),
    ({**STUDY, "constraints": {"min_speedup": 1.5}}, "constraints.min_speedup"),
    ({**STUDY, "constraints": {"max_params": 0}}, "constraints.max_params"),
    ({**STUDY, "axes": None}, "axes"),
    ({**STUDY, "candidates": [{"prune": {"metric": "taylor", "ratio": 0.25}}]}, "axes"),
    ({k: v for k, v in STUDY.items() if k != "axes"} | {"candidates": [
        {"prune": {"metric": "taylor", "ratio": 0.25}}, {"prune": {"metric": "taylor", "ratio": 2}}]},
     "candidates[1].prune.ratio"),
    ({k: v for k, v in STUDY.items() if k != "axes"} | {"candidates": [
        {"prune": {"metric": "manual", "layers": [3, 99]}}]}, "candidates[0].prune.layers"),
    ({**STUDY, "model": "no/such-model-dir", "unknown": 1}, "unknown"),
    ({**STUDY, "webhook": {"url": "ftp://x"}}, "webhook.url"),
    ({**STUDY, "quality": "perplexity", "evaluate": {"tasks": ["arc_easy"], "limit": 10}}, "quality"),
]


@pytest.mark.parametrize(("body", "param"), BAD, ids=[p for _, p in BAD])
def test_bad_inputs_are_422_naming_the_field(client, new_tenant, body, param):
    _, h = new_tenant
    r = client.post("/v1/studies", json=body, headers=h)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == param, r.json()
    assert client.get("/v1/studies", headers=h).json()["data"] == []  # nothing was created


def test_too_many_candidates(client, new_tenant, service_settings):
    _, h = new_tenant
    ratios = [round(0.03 * i, 2) for i in range(1, 31)]
    body = {**STUDY, "axes": {"metrics": ["taylor", "block_influence", "magnitude_l1"], "ratios": ratios}}
    r = client.post("/v1/studies", json=body, headers=h)
    assert r.status_code == 422 and r.json()["error"]["code"] == "too_many_candidates"
    assert r.json()["error"]["param"] == "axes"
    assert client.post("/v1/studies", json=[1], headers=h).status_code == 422


def test_explicit_candidates_and_the_cancelled_webhook(client, app, new_tenant, migrated_db):
    from sqlalchemy import select

    from layerprune.db.models import WebhookDelivery
    from layerprune.db.session import session_scope

    _, h = new_tenant
    body = {"model": "bundled:smollm2-135m-instruct", "evaluate": EVALUATE,
            "candidates": [{"prune": {"metric": "manual", "layers": [20, 21]}},
                           {"label": "mine", "prune": {"metric": "angular", "num_layers": 4, "replace": "linear"},
                            "finetune": {"method": "partial", "objective": "distill", "max_steps": 2}}],
            "webhook": {"url": "http://127.0.0.1:9/hook", "secret": "s3cret"}}
    settings = app.state.settings
    app.state.settings = settings.model_copy(update={"webhook_allowed_hosts": "127.0.0.1"})
    try:
        r = client.post("/v1/studies", json=body, headers=h)
    finally:
        app.state.settings = settings
    assert r.status_code == 201, r.text
    study = r.json()
    assert [c["label"] for c in study["candidates"]] == ["manual · layers 20,21", "mine"]
    assert study["candidates"][1]["recipe"] == {"metric": "angular", "num_layers": 4, "ratio": None,
                                                "replace": "linear",
                                                "heal": {"method": "partial", "objective": "distill"}}
    assert study["spec"]["webhook"]["secret"] == "***" and study["quality"]["name"] == "mean_acc"
    assert client.post(f"/v1/studies/{study['id']}/cancel", headers=h).json()["status"] == "cancelled"
    with session_scope(migrated_db) as s:
        rows = list(s.scalars(select(WebhookDelivery).where(WebhookDelivery.study_id == study["id"])))
        assert [(r.event_type, r.job_id) for r in rows] == [("study.cancelled", study["baseline"]["job_id"])]
