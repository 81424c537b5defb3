"""api.routes.retention: ``DELETE /v1/jobs/{id}`` on the embedded app (SQLite, local store).

A live job is refused (409) in each live state; a finished job loses its artifact rows and stored
files, keeps its record, and gains one ``artifact`` event with the exact count and bytes; a
repeat is idempotent and changes nothing more; an object store that is down is a 503 after the
rows are gone. (Postgres, the tenant check and signed links:
tests/ops/test_api_ops.py; S3: tests/ops/test_api_s3.py.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from layerprune.db.models import Artifact, JobEvent
from layerprune.db.session import session_scope
from tests.api.helpers import PRUNE, publish, set_status
from tests.service_fixtures import service_env

KEY = "lp_retention_key_0123456789"
H = {"Authorization": f"Bearer {KEY}"}
FILES = {"config.json": b"{}", "model.safetensors": b"\x01" * 1000, "sub/tokenizer.json": b"[1, 2, 3]"}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Any]]:
    from layerprune.api.app import create_app
    from layerprune.settings import Settings

    data_dir = tmp_path_factory.mktemp("retention")
    settings = Settings(data_dir=data_dir, key_secret="k" * 32, api_keys=f"t1:{KEY}")
    # The process's settings too: a new job is dispatched through them (to data_dir/broker).
    with service_env(data_dir=data_dir, database_url=None, broker_url=None, storage_url=None), \
            TestClient(create_app(settings, start_background=False)) as client:
        yield client, settings


def new_job(client: TestClient) -> str:
    r = client.post("/v1/jobs", json=PRUNE, headers=H)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def events(url: str, job_id: str) -> list[JobEvent]:
    with session_scope(url) as s:
        rows = s.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type == "artifact")
                         .order_by(JobEvent.seq)).all()
        s.expunge_all()
        return list(rows)


@pytest.mark.parametrize("status", ["queued", "running", "cancelling"])
def test_a_live_job_is_refused_and_keeps_everything(status: str, service, tmp_path: Path) -> None:
    client, settings = service
    url = settings.effective_database_url
    job_id = new_job(client)
    publish(url, settings, "t1", job_id, FILES, tmp_path)  # files already there (a worker publishing)
    set_status(url, job_id, status)
    r = client.delete(f"/v1/jobs/{job_id}", headers=H)
    assert r.status_code == 409
    assert r.json()["error"] == {"code": "job_live", "param": None,
                                 "message": f"the job is {status}; cancel it or wait until it ends"}
    assert (settings.effective_storage_dir / "t1" / job_id / "model.safetensors").is_file()
    with session_scope(url) as s:
        assert len(s.scalars(select(Artifact).where(Artifact.job_id == job_id)).all()) == 3


def test_a_finished_job_loses_its_artifacts_once_and_keeps_its_record(service, tmp_path: Path) -> None:
    client, settings = service
    url = settings.effective_database_url
    job_id = new_job(client)
    publish(url, settings, "t1", job_id, FILES, tmp_path)
    stored = settings.effective_storage_dir / "t1" / job_id
    assert len(client.get(f"/v1/jobs/{job_id}/artifacts", headers=H).json()) == 3

    r = client.delete(f"/v1/jobs/{job_id}", headers=H)
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["id"] == job_id and job["status"] == "succeeded"
    assert job["result"]["artifacts"] == [] and job["result"]["artifacts_deleted_at"].endswith("Z")
    assert job["result"]["num_layers_after"] == 23  # the rest of the result stays
    assert not stored.exists()
    assert client.get(f"/v1/jobs/{job_id}/artifacts", headers=H).json() == []
    (event,) = events(url, job_id)
    size = sum(len(v) for v in FILES.values())
    assert event.data == {"deleted": True, "count": 3, "size_bytes": size}
    assert event.message == f"artifacts deleted (3 files, {size} bytes)"

    again = client.delete(f"/v1/jobs/{job_id}", headers=H)
    assert again.status_code == 200
    assert again.json()["result"] == job["result"]  # same deletion time: nothing was deleted this time
    assert len(events(url, job_id)) == 1
    assert client.get(f"/v1/jobs/{job_id}", headers=H).status_code == 200


def test_a_failed_job_without_artifacts_is_answered_unchanged(service) -> None:
    client, settings = service
    job_id = new_job(client)
    set_status(settings.effective_database_url, job_id, "failed", result=None)
    r = client.delete(f"/v1/jobs/{job_id}", headers=H)
    assert r.status_code == 200
    assert r.json()["status"] == "failed" and r.json()["result"] is None
    assert events(settings.effective_database_url, job_id) == []


def test_unknown_job_and_missing_key(service) -> None:
    client, _ = service
    r = client.delete("/v1/jobs/job_" + "z" * 24, headers=H)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert client.delete("/v1/jobs/job_" + "z" * 24).status_code == 401


def test_an_object_store_that_fails_after_the_rows_are_gone_is_a_503_to_retry(tmp_path: Path,
                                                                               monkeypatch) -> None:
    """Rows go first (with the event), then the files: a store that fails leaves nothing pointing
    at the leftovers, and the repeated DELETE records nothing twice."""
    pytest.importorskip("boto3")
    import socket

    from layerprune.api.app import create_app
    from layerprune.settings import Settings

    with socket.socket() as s:  # a port nothing listens on: the object store is down
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    settings = Settings(data_dir=tmp_path, key_secret="k" * 32, api_keys=f"t1:{KEY}",
                        storage_url="s3://artifacts/lp", s3_endpoint_url=f"http://127.0.0.1:{port}")
    url = settings.effective_database_url
    with service_env(data_dir=tmp_path, database_url=None, broker_url=None, storage_url=None), \
            TestClient(create_app(settings, start_background=False)) as client:
        job_id = new_job(client)
        set_status(url, job_id, "succeeded", result={"artifacts": [{"path": "model.safetensors"}]})
        with session_scope(url) as s:
            s.add(Artifact(job_id=job_id, path="model.safetensors", size_bytes=123, sha256="0" * 64,
                           storage_key=f"t1/{job_id}/model.safetensors"))
        for attempt in range(2):
            r = client.delete(f"/v1/jobs/{job_id}", headers=H)
            assert r.status_code == 503, (attempt, r.text)
            assert r.json()["error"]["code"] == "storage_error" and "retry" in r.json()["error"]["message"]
        with session_scope(url) as s:
            assert s.scalars(select(Artifact).where(Artifact.job_id == job_id)).all() == []
        (event,) = events(url, job_id)
        assert event.data == {"deleted": True, "count": 1, "size_bytes": 123}
        assert client.get(f"/v1/jobs/{job_id}", headers=H).json()["result"]["artifacts"] == []
