"""A real worker process with artifacts on S3 (moto) and a webhook receiver on loopback.

Checks, end to end: the worker publishes to object storage; the job's webhook is delivered by the
worker's sender thread (after one failed attempt, so the retry is seen) and signed; a store that
fails at publish time (its bucket is gone) fails the job with ``storage_error``.
"""

from __future__ import annotations

import hashlib
import os

import pytest

from tests.service_fixtures import restore_service_env
from tests.worker.service import Service, wait_until

SECRET = "whsec_" + "c2VjcmV0LWtleS1mb3ItdGVzdHM="


@pytest.fixture
def s3_service(tmp_path, s3_endpoint, aws_env, receiver):
    from layerprune.db.migrate import upgrade_to_head
    from tests.tiny import save_tiny

    models = tmp_path / "models"
    save_tiny(models / "tiny", "llama")
    bucket = "lp-e2e-" + hashlib.sha1(str(tmp_path).encode()).hexdigest()[:10]
    saved = {k: v for k, v in os.environ.items() if k.startswith("LAYERPRUNE_")}
    svc = Service(tmp_path, f"sqlite:///{tmp_path / 'e2e.db'}", "", models, extra_env={
        "LAYERPRUNE_STORAGE_URL": f"s3://{bucket}/lp", "LAYERPRUNE_S3_ENDPOINT_URL": s3_endpoint,
        "LAYERPRUNE_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1", "LAYERPRUNE_WEBHOOK_INTERVAL_SECONDS": "0.2",
        "LAYERPRUNE_WEBHOOK_BACKOFF_BASE_SECONDS": "0.3", "LAYERPRUNE_WORKER_QUEUES": "cpu"})
    svc.apply_env()
    upgrade_to_head(svc.database_url)
    from layerprune.artifact_store import get_store

    store = get_store()
    store.client.create_bucket(Bucket=bucket)
    try:
        yield svc, store
    finally:
        svc.close()
        restore_service_env(saved)


def test_worker_publishes_to_s3_and_calls_back(s3_service, receiver):
    from layerprune.webhooks import verify

    svc, store = s3_service
    receiver.fail_first = 1
    hook = {"url": receiver.url, "secret": SECRET}
    first = svc.submit(svc.spec(prune={"metric": "reverse_order", "num_layers": 2}, webhook=hook))
    svc.start_worker()
    job = svc.wait_status(first, timeout=120)
    assert job.status == "succeeded", svc.logs()
    keys = store.list_keys(f"tenant-a/{first}")
    assert f"tenant-a/{first}/config.json" in keys and any(k.endswith(".safetensors") for k in keys)

    wait_until(lambda: len(receiver.requests) >= 2, 30, "the webhook retry")
    for req in receiver.requests:
        assert verify(SECRET, req.headers, req.body)
        assert req.json["type"] == "job.succeeded" and req.json["data"]["id"] == first
    outcomes = [e.data["outcome"] for e in svc.events(first) if e.type == "webhook"]
    assert outcomes == ["retry", "delivered"]

    # The bucket disappears: publishing fails with a clear code and leaves nothing behind.
    for key in store.list_keys():
        store.client.delete_object(Bucket=store.bucket, Key=f"{store.prefix}/{key}")
    store.client.delete_bucket(Bucket=store.bucket)
    third = svc.submit(svc.spec(prune={"metric": "reverse_order", "num_layers": 1}))
    job = svc.wait_status(third, timeout=120)
    assert job.status == "failed" and job.error["code"] == "storage_error", job.error
