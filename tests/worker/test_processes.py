"""Real worker processes on a real Postgres and Redis: the job lifecycle and its failure modes.

Marked ``service``: each test starts Celery worker subprocesses (and private Redis/Postgres
servers where a server is stopped or restarted) and runs jobs on a tiny model in seconds.
"""

from __future__ import annotations

import hashlib
import time

import httpx
import pytest

from tests.worker.service import FAST_FINETUNE, slow_finetune

pytestmark = [pytest.mark.service, pytest.mark.timeout(240)]

PRUNE = {"metric": "reverse_order", "num_layers": 2}
EVALUATE = {"perplexity": {"dataset": "bundled:wikipedia-eval", "seq_len": 32, "max_windows": 2},
            "tasks": ["arc_easy"], "limit": 4}
KEY_A = {"Authorization": "Bearer key-a"}


def _download_and_load(base: str, job_id: str, dest) -> list[dict]:  # noqa: ANN001
    """Fetch every artifact over HTTP, check its sha256, load the directory with from_pretrained."""
    from transformers import AutoModelForCausalLM

    listing = httpx.get(f"{base}/v1/jobs/{job_id}/artifacts", headers=KEY_A, timeout=30).json()
    dest.mkdir()
    for art in listing:
        body = httpx.get(f"{base}/v1/jobs/{job_id}/artifacts/{art['path']}", headers=KEY_A, timeout=30).content
        assert hashlib.sha256(body).hexdigest() == art["sha256"] and len(body) == art["size_bytes"]
        (dest / art["path"]).parent.mkdir(parents=True, exist_ok=True)
        (dest / art["path"]).write_bytes(body)
    model = AutoModelForCausalLM.from_pretrained(dest)
    assert model.config.num_hidden_layers == 6 and len(model.model.layers) == 6
    return listing


def test_lifecycle_prune_heal_evaluate_through_the_api(pg_redis_service, tmp_path):
    svc = pg_redis_service
    svc.start_worker()
    base = svc.start_api()
    body = {"model": str(svc.model_root / "tiny"), "prune": PRUNE, "finetune": FAST_FINETUNE, "evaluate": EVALUATE,
            "metadata": {"suite": "worker"}}
    r = httpx.post(f"{base}/v1/jobs", json=body, headers=KEY_A, timeout=30)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    svc.wait_status(job_id, timeout=120)
    job = httpx.get(f"{base}/v1/jobs/{job_id}", headers=KEY_A, timeout=30).json()
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 1  # the heartbeat kept the (6 s) lease alive through the whole job
    res = job["result"]
    assert res["removed_layers"] == [6, 7]
    assert (res["num_layers_before"], res["num_layers_after"]) == (8, 6)
    assert res["params_after"] < res["params_before"]
    assert set(res["metrics"]) == {"before", "after", "deltas"}
    assert res["metrics"]["after"]["tasks"]["arc_easy"]["n"] == 4
    assert res["finetune"]["steps"] == 2 if "steps" in res["finetune"] else True
    listing = _download_and_load(base, job_id, tmp_path / "dl")
    paths = {a["path"] for a in listing}
    assert {"config.json", "model.safetensors", "README.md", "layerprune.json"} <= paths
    assert {a["path"]: a["sha256"] for a in listing} == {a["path"]: a["sha256"] for a in res["artifacts"]}
    events = httpx.get(f"{base}/v1/jobs/{job_id}/events", headers=KEY_A, timeout=30).json()["data"]
    types = [e["type"] for e in events]
    stages = [e["data"]["stage"] for e in events if e["type"] == "stage"]
    assert stages == ["prune", "finetune", "evaluate", "export"]
    assert any(e["type"] == "progress" and "loss" in e["data"] for e in events)
    assert types[-1] == "state" and events[-1]["data"]["status"] == "succeeded"
    assert not (svc.data_dir / "work" / job_id).exists()  # scratch space removed after the end


def test_two_workers_never_run_one_job_twice(pg_redis_service):
    svc = pg_redis_service
    svc.start_worker()
    svc.start_worker()
    from layerprune.queue.celery_app import send_job

    jobs = [svc.submit(svc.spec(prune=PRUNE)) for _ in range(4)]
    for job_id in jobs:  # every message delivered three times in all
        send_job(job_id, "cpu")
        send_job(job_id, "cpu")
    for job_id in jobs:
        job = svc.wait_status(job_id, timeout=90)
        assert job.status == "succeeded", svc.logs()
        assert job.attempts == 1
        assert svc.running_events(job_id) == 1


def test_sigkill_mid_job_is_retried_and_resumes(pg_redis_service):
    svc = pg_redis_service
    svc.start_worker()
    svc.start_worker()  # started now so that it is ready when the other one dies
    job_id = svc.submit(svc.spec(prune=PRUNE, finetune=slow_finetune(60)), queue="gpu")
    svc.wait_progress(job_id, "finetune", min_step=15, timeout=120)
    svc.worker_of(job_id).kill()  # SIGKILL of that worker's whole process group, mid-heal
    assert svc.job(job_id).status == "running"
    job = svc.wait_status(job_id, timeout=120)
    assert job.status == "succeeded", svc._brief(job_id)
    assert job.attempts == 2
    events = svc.events(job_id)
    assert any(e.type == "retry" for e in events)
    # The retry skipped the finished prune stage and resumed healing from a checkpoint.
    assert [e.data.get("stage") for e in events if e.type == "stage"].count("prune") == 1
    retry_at = max(i for i, e in enumerate(events) if e.type == "retry")
    steps_after = [e.data["step"] for e in events[retry_at:] if e.type == "progress" and "step" in e.data]
    assert steps_after and steps_after[0] > 5


def test_redis_restart_with_jobs_queued_and_running(pg_redis_service, private_redis):
    svc = pg_redis_service
    svc.start_worker()
    running = svc.submit(svc.spec(prune=PRUNE, finetune=slow_finetune(40)), queue="gpu")
    queued = [svc.submit(svc.spec(prune=PRUNE), queue="gpu") for _ in range(2)]
    svc.wait_progress(running, "finetune", min_step=5, timeout=120)
    private_redis.stop()  # no persistence: the queued messages are gone
    time.sleep(1.0)
    private_redis.start()
    for job_id in [running, *queued]:
        job = svc.wait_status(job_id, timeout=120)
        assert job.status == "succeeded", svc._brief(job_id)


def test_broker_down_when_job_committed(pg_redis_service, private_redis):
    svc = pg_redis_service
    svc.start_worker()
    private_redis.stop()
    job_id = svc.submit(svc.spec(prune=PRUNE))
    assert svc.job(job_id).dispatched_at is None  # the send failed; the job waits in the outbox
    time.sleep(1.0)
    private_redis.start()
    job = svc.wait_status(job_id, timeout=120)
    assert job.status == "succeeded"
    assert any(e.type == "dispatched" for e in svc.events(job_id))


def test_cancel_while_queued_and_while_running(pg_redis_service):
    from layerprune.db.models import Job
    from layerprune.queue.transitions import request_cancel

    svc = pg_redis_service
    svc.start_worker()
    running = svc.submit(svc.spec(prune=PRUNE, finetune=slow_finetune(400)), queue="gpu")
    queued = svc.submit(svc.spec(prune=PRUNE), queue="gpu")  # behind it: one job at a time
    svc.wait_progress(running, "finetune", min_step=5, timeout=90)
    with svc.sessions() as s:
        request_cancel(s, s.get(Job, queued))
        s.commit()
    assert svc.job(queued).status == "cancelled"
    t0 = time.monotonic()
    with svc.sessions() as s:
        request_cancel(s, s.get(Job, running))
        s.commit()
    job = svc.wait_status(running, timeout=30)
    assert job.status == "cancelled" and time.monotonic() - t0 < 10
    assert job.result is None
    assert not (svc.data_dir / "artifacts" / "tenant-a" / running).exists()
    time.sleep(2.0)  # the queued job's message reaches the worker and is dropped
    assert svc.job(queued).status == "cancelled" and svc.running_events(queued) == 0


def test_postgres_restart_api_503_then_recovers(private_pg_service, private_pg):
    svc = private_pg_service
    svc.start_worker()
    base = svc.start_api()
    body = {"model": str(svc.model_root / "tiny"), "prune": PRUNE, "finetune": slow_finetune(40)}
    job_id = httpx.post(f"{base}/v1/jobs", json=body, headers=KEY_A, timeout=30).json()["id"]
    svc.wait_progress(job_id, "finetune", min_step=5, timeout=120)
    private_pg.stop()
    r = httpx.get(f"{base}/v1/jobs/{job_id}", headers=KEY_A, timeout=30)
    assert r.status_code == 503 and r.json()["error"]["code"]
    assert httpx.get(f"{base}/readyz", timeout=30).status_code == 503
    time.sleep(3.0)
    private_pg.start()
    job = svc.wait_status(job_id, timeout=120)
    assert job.status == "succeeded", svc._brief(job_id)
    r = httpx.get(f"{base}/v1/jobs/{job_id}", headers=KEY_A, timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "succeeded"
    assert httpx.get(f"{base}/readyz", timeout=30).status_code == 200


def test_embedded_default_end_to_end(embedded_service, tmp_path):
    svc = embedded_service
    svc.start_worker()
    base = svc.start_api()
    body = {"model": str(svc.model_root / "tiny"), "prune": PRUNE}
    r = httpx.post(f"{base}/v1/jobs", json=body, headers=KEY_A, timeout=30)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    job = svc.wait_status(job_id, timeout=90)
    assert job.status == "succeeded", svc._brief(job_id)
    _download_and_load(base, job_id, tmp_path / "dl")


def test_higher_priority_runs_first_from_a_redis_backlog(pg_redis_service):
    """Messages sent low priority first wait in Redis; the one worker then takes the most urgent first."""
    svc = pg_redis_service
    order = [("low", -20), ("normal", 0), ("urgent", 60), ("high", 5)]
    ids = {name: svc.submit(svc.spec(prune=PRUNE, priority=priority)) for name, priority in order}
    svc.start_worker()
    for job_id in ids.values():
        assert svc.wait_status(job_id, timeout=120).status == "succeeded", svc.logs()
    started = sorted(ids, key=lambda name: svc.job(ids[name]).started_at)
    assert started == ["urgent", "high", "normal", "low"], started
