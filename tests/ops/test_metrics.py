"""GET /metrics: Prometheus text with HTTP, job, queue, duration, webhook and heartbeat metrics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from layerprune import metrics
from layerprune.api.routes.metrics import install


def _app(sessions) -> FastAPI:
    app = FastAPI()
    app.state.session_factory = sessions

    @app.get("/v1/jobs/{job_id}")
    def get_job(job_id: str):
        return {"id": job_id}

    install(app)
    return app


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _seed(sessions):
    from layerprune.db.events import add_event
    from layerprune.db.models import Job, WebhookDelivery

    t0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    with sessions() as s:
        s.add(Job(tenant="a", status="queued", queue="gpu", spec={}, created_at=t0))
        s.add(Job(tenant="a", status="queued", queue="cpu", spec={}, created_at=t0))
        s.add(Job(tenant="b", status="running", queue="gpu", spec={}, worker_id="w-1",
                  heartbeat_at=t0 + timedelta(seconds=30), started_at=t0))
        done = Job(tenant="a", status="succeeded", queue="gpu", spec={}, created_at=t0,
                   started_at=t0 + timedelta(seconds=10), finished_at=t0 + timedelta(seconds=130))
        s.add(done)
        s.flush()
        # Stage timings come from the events: prune 20 s, evaluate 100 s.
        for offset, type_, data in ((10, "stage", {"stage": "prune"}), (30, "stage", {"stage": "evaluate"}),
                                    (130, "state", {"status": "succeeded"})):
            evt = add_event(s, done.id, type_, type_, data=data)
            evt.created_at = t0 + timedelta(seconds=offset)
        s.add(WebhookDelivery(job_id=done.id, url="https://h.example/", event_type="job.succeeded",
                              status="delivered", attempts=2))
        s.commit()


def test_metrics_text(sessions):
    _seed(sessions)
    metrics.WEBHOOK_DELIVERIES.labels(outcome="delivered").inc()
    client = TestClient(_app(sessions))
    for job_id in ("job_a", "job_b", "job_c"):
        assert client.get(f"/v1/jobs/{job_id}").status_code == 200
    assert client.get("/nowhere/xyz").status_code == 404
    res = client.get("/metrics")
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/plain")
    got = _samples(res.text)

    # requests by route template (ids never become labels)
    key = ("layerprune_http_requests_total", (("method", "GET"), ("route", "/v1/jobs/{job_id}"), ("status", "200")))
    assert got[key] >= 3
    assert got[("layerprune_http_requests_total",
                (("method", "GET"), ("route", "<unmatched>"), ("status", "404")))] >= 1
    assert got[("layerprune_http_request_duration_seconds_count",
                (("method", "GET"), ("route", "/v1/jobs/{job_id}")))] >= 3
    assert not any("job_a" in str(k) for k in got)

    assert got[("layerprune_jobs", (("status", "queued"),))] == 2
    assert got[("layerprune_jobs", (("status", "running"),))] == 1
    assert got[("layerprune_jobs", (("status", "failed"),))] == 0
    assert got[("layerprune_queue_depth", (("queue", "gpu"),))] == 1
    assert got[("layerprune_queue_depth", (("queue", "cpu"),))] == 1
    assert got[("layerprune_queue_oldest_age_seconds", ())] > 0
    beat = datetime(2026, 1, 1, 12, 0, 30, tzinfo=UTC).timestamp()
    assert got[("layerprune_worker_last_heartbeat_timestamp_seconds", (("worker_id", "w-1"),))] == beat
    assert got[("layerprune_workers_busy", ())] == 1

    assert got[("layerprune_job_queue_wait_seconds_count", (("queue", "gpu"),))] == 1
    assert got[("layerprune_job_queue_wait_seconds_sum", (("queue", "gpu"),))] == 10
    assert got[("layerprune_job_run_seconds_sum", (("queue", "gpu"), ("status", "succeeded")))] == 120
    assert got[("layerprune_job_stage_seconds_sum", (("stage", "prune"),))] == 20
    assert got[("layerprune_job_stage_seconds_sum", (("stage", "evaluate"),))] == 100
    assert got[("layerprune_job_stage_seconds_bucket", (("le", "15.0"), ("stage", "prune")))] == 0
    assert got[("layerprune_job_stage_seconds_bucket", (("le", "30.0"), ("stage", "prune")))] == 1
    assert got[("layerprune_webhook_deliveries_total", (("outcome", "delivered"),))] >= 1
    assert got[("layerprune_webhook_deliveries_by_status", (("status", "delivered"),))] == 1
    assert got[("layerprune_webhook_deliveries_by_status", (("status", "pending"),))] == 0
    assert got[("layerprune_database_up", ())] == 1


def test_metrics_token_guards_the_endpoint(sessions):
    app = FastAPI()
    app.state.session_factory = sessions
    install(app, token="scrape-secret")
    client = TestClient(app)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic scrape-secret"}):
        res = client.get("/metrics", headers=headers)
        assert res.status_code == 401 and res.headers["www-authenticate"] == "Bearer"
        assert res.json()["error"]["code"] == "unauthorized" and "scrape-secret" not in res.text
    res = client.get("/metrics", headers={"Authorization": "Bearer scrape-secret"})
    assert res.status_code == 200 and "layerprune_database_up" in res.text


def test_metrics_survive_a_missing_database(tmp_path):
    from layerprune.db.session import session_factory

    app = _app(session_factory(f"sqlite:///{tmp_path / 'not-migrated.db'}"))  # no tables
    res = TestClient(app).get("/metrics")
    assert res.status_code == 200
    assert _samples(res.text)[("layerprune_database_up", ())] == 0
