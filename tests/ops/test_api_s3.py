"""The API and the worker's publish step with artifacts on S3 (moto server on loopback)."""

from __future__ import annotations

import hashlib

import httpx
from fastapi.testclient import TestClient

from tests.api.helpers import PRUNE, publish
from tests.service_fixtures import *  # noqa: F403

DATA = bytes(range(256)) * 64  # 16 KiB


def test_artifacts_on_s3_download_range_and_retention(service_settings, migrated_db, new_tenant, s3_endpoint,
                                                       aws_env, tmp_path):
    from layerprune.api.app import create_app
    from layerprune.artifact_store import get_store
    from layerprune.storage_s3 import S3Store

    bucket = "lp-api-" + hashlib.sha1(str(tmp_path).encode()).hexdigest()[:10]
    settings = service_settings.model_copy(update={"storage_url": f"s3://{bucket}/prod",
                                                   "s3_endpoint_url": s3_endpoint})
    store = get_store(settings)
    assert isinstance(store, S3Store)
    store.client.create_bucket(Bucket=bucket)
    tenant, headers = new_tenant
    with TestClient(create_app(settings, start_background=False)) as c:
        job_id = c.post("/v1/jobs", json=PRUNE, headers=headers).json()["id"]
        publish(migrated_db, settings, tenant, job_id, {"model.safetensors": DATA, "config.json": b"{}"}, tmp_path)
        assert store.list_keys(f"{tenant}/{job_id}") == [f"{tenant}/{job_id}/config.json",
                                                         f"{tenant}/{job_id}/model.safetensors"]
        full = c.get(f"/v1/jobs/{job_id}/artifacts/model.safetensors", headers=headers)
        assert full.status_code == 200 and full.content == DATA
        assert full.headers["etag"] == f'"{hashlib.sha256(DATA).hexdigest()}"'
        part = c.get(f"/v1/jobs/{job_id}/artifacts/model.safetensors", headers={**headers, "Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == DATA[100:200]

        # Signed dashboard link with presigned redirects on: 307 to the object store, which serves the bytes.
        link = c.post("/v1/download-links", json={"job_id": job_id, "path": "config.json"}, headers=headers).json()
        presigning = settings.model_copy(update={"s3_presign_downloads": True})
        with TestClient(create_app(presigning, start_background=False)) as p:
            res = p.get(link["url"], follow_redirects=False)
            assert res.status_code == 307 and res.headers["location"].startswith(s3_endpoint)
            assert httpx.get(res.headers["location"], trust_env=False).content == b"{}"
            res = p.get(f"/v1/jobs/{job_id}/artifacts/model.safetensors", headers=headers, follow_redirects=False)
            assert res.status_code == 307
            ranged = httpx.get(res.headers["location"], headers={"Range": "bytes=0-9"}, trust_env=False)
            assert ranged.status_code == 206 and ranged.content == DATA[:10]

        assert c.delete(f"/v1/jobs/{job_id}", headers=headers).status_code == 200
        assert store.list_keys(f"{tenant}/{job_id}") == []
