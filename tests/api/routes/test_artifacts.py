"""Artifacts: listing, single-range downloads with ETag, the streamed tar, and only recorded paths."""

from __future__ import annotations

import hashlib
import io
import tarfile

import pytest

from tests.api.helpers import PRUNE, publish

FILES = {
    "config.json": b'{"num_hidden_layers": 23}',
    "model.safetensors": bytes(range(256)) * 40 + b"tail",  # 10244 bytes: not a multiple of 512
    "tokenizer/tokenizer.json": b'{"version": "1.0"}',
    "README.md": b"# pruned\n",
    "empty.txt": b"",
    "deep/" + "d" * 120 + "/long name é.txt": b"long path",  # needs pax headers
}


@pytest.fixture(scope="module")
def published(client, migrated_db, service_settings, tmp_path_factory):
    from layerprune.db.keys import add_key
    from layerprune.db.session import session_scope

    with session_scope(migrated_db) as s:
        key = add_key(s, "art-tenant")
    h = {"Authorization": f"Bearer {key}"}
    job_id = client.post("/v1/jobs", json=PRUNE, headers=h).json()["id"]
    publish(migrated_db, service_settings, "art-tenant", job_id, FILES, tmp_path_factory.mktemp("art"))
    return job_id, h


def test_list(client, published):
    job_id, h = published
    listing = client.get(f"/v1/jobs/{job_id}/artifacts", headers=h).json()
    assert isinstance(listing, list)  # docs/contract.md: a bare array
    by_path = {a["path"]: a for a in listing}
    assert set(by_path) == set(FILES)
    for path, data in FILES.items():
        a = by_path[path]
        assert a["size_bytes"] == len(data) and a["sha256"] == hashlib.sha256(data).hexdigest()
        assert a["url"].endswith(f"/v1/jobs/{job_id}/artifacts/" + path.replace(" ", "%20").replace("é", "%C3%A9"))


def test_download_every_file_by_its_url(client, published):
    job_id, h = published
    for a in client.get(f"/v1/jobs/{job_id}/artifacts", headers=h).json():
        r = client.get(a["url"], headers=h)
        assert r.status_code == 200, a["path"]
        assert r.content == FILES[a["path"]]
        assert r.headers["etag"] == f'"{a["sha256"]}"' and r.headers["accept-ranges"] == "bytes"
        assert int(r.headers["content-length"]) == a["size_bytes"]


def test_ranges(client, published):
    job_id, h = published
    url = f"/v1/jobs/{job_id}/artifacts/model.safetensors"
    data = FILES["model.safetensors"]
    n = len(data)
    for header, (start, end) in {"bytes=0-99": (0, 99), "bytes=100-": (100, n - 1), "bytes=-4": (n - 4, n - 1),
                                 "bytes=10000-99999": (10000, n - 1), "bytes=5-5": (5, 5)}.items():
        r = client.get(url, headers={**h, "Range": header})
        assert r.status_code == 206, header
        assert r.content == data[start:end + 1]
        assert r.headers["content-range"] == f"bytes {start}-{end}/{n}"
        assert int(r.headers["content-length"]) == end - start + 1
    for header in (f"bytes={n}-", "bytes=-0", f"bytes={n + 5}-{n + 9}"):
        r = client.get(url, headers={**h, "Range": header})
        assert r.status_code == 416, header
        assert r.headers["content-range"] == f"bytes */{n}" and r.json()["error"]["code"] == "range_not_satisfiable"
    # Several ranges, other units and garbage are ignored: the whole file (RFC 9110 allows it).
    for header in ("bytes=0-1,5-6", "items=0-1", "bytes=abc", "bytes=9-3"):
        r = client.get(url, headers={**h, "Range": header})
        assert r.status_code == 200 and r.content == data, header
    empty = f"/v1/jobs/{job_id}/artifacts/empty.txt"
    assert client.get(empty, headers={**h, "Range": "bytes=0-"}).status_code == 416
    assert client.get(empty, headers=h).content == b""


def test_etag_conditionals(client, published):
    job_id, h = published
    url = f"/v1/jobs/{job_id}/artifacts/config.json"
    etag = client.get(url, headers=h).headers["etag"]
    assert etag == '"' + hashlib.sha256(FILES["config.json"]).hexdigest() + '"'
    for inm in (etag, f'W/{etag}', f'"other", {etag}', "*"):
        r = client.get(url, headers={**h, "If-None-Match": inm})
        assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == etag
    assert client.get(url, headers={**h, "If-None-Match": '"stale"'}).status_code == 200
    # If-Range with the current ETag honours the range; with a stale one, the whole file.
    assert client.get(url, headers={**h, "Range": "bytes=0-1", "If-Range": etag}).status_code == 206
    r = client.get(url, headers={**h, "Range": "bytes=0-1", "If-Range": '"stale"'})
    assert r.status_code == 200 and r.content == FILES["config.json"]


TRAVERSAL = [
    "../../../../etc/passwd", "..%2F..%2F..%2Fetc%2Fpasswd", "%2e%2e/%2e%2e/etc/passwd", "/etc/passwd",
    "tokenizer/%2e%2e/config.json", "%2e/config.json", "config.json/", "tokenizer/../../../art-tenant",
    "..\\..\\etc\\passwd", "config.json%00.txt", "%252e%252e%252fetc", "CONFIG.JSON", "tokenizer",
    "deep", "",
]


@pytest.mark.parametrize("path", TRAVERSAL)
def test_only_recorded_paths_are_served(client, published, path):
    job_id, h = published
    r = client.get(f"/v1/jobs/{job_id}/artifacts/{path}", headers=h)
    if r.status_code == 200 and path == "":
        assert r.json()["object"] == "list"  # ".../artifacts/" is the listing itself
        return
    assert r.status_code == 404, (path, r.status_code)
    assert "root:" not in r.text


def test_client_normalised_dot_segments_name_a_recorded_file(client, published):
    # HTTP clients resolve "a/../b" before sending (RFC 3986): the server then sees a recorded path.
    job_id, h = published
    assert client.get(f"/v1/jobs/{job_id}/artifacts/tokenizer/../config.json", headers=h).content == FILES["config.json"]


def test_tar_stream(client, published):
    job_id, h = published
    with client.stream("GET", f"/v1/jobs/{job_id}/artifacts.tar", headers=h) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-tar"
        chunks = list(r.iter_bytes())
        declared = int(r.headers["content-length"])
    body = b"".join(chunks)
    assert len(body) == declared and len(body) % tarfile.RECORDSIZE == 0
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:") as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == set(FILES)
        for name, data in FILES.items():
            assert members[name].isfile() and members[name].size == len(data)
            assert tar.extractfile(members[name]).read() == data


def test_tar_and_list_of_unfinished_job(client, new_tenant):
    _, h = new_tenant
    job_id = client.post("/v1/jobs", json=PRUNE, headers=h).json()["id"]
    assert client.get(f"/v1/jobs/{job_id}/artifacts", headers=h).json() == []
    r = client.get(f"/v1/jobs/{job_id}/artifacts.tar", headers=h)
    assert r.status_code == 404 and r.json()["error"]["code"] == "no_artifacts"
    assert client.get(f"/v1/jobs/{job_id}/artifacts/config.json", headers=h).status_code == 404


def test_file_missing_from_store_is_404_not_500(client, published, service_settings):
    job_id, h = published
    path = service_settings.effective_storage_dir / "art-tenant" / job_id / "README.md"
    saved = path.read_bytes()
    path.unlink()
    try:
        r = client.get(f"/v1/jobs/{job_id}/artifacts/README.md", headers=h)
        assert r.status_code == 404 and r.json()["error"]["code"] == "artifact_unavailable"
    finally:
        path.write_bytes(saved)
