"""File uploads validated as they stream; list, get, delete (409 while a live job uses it)."""

from __future__ import annotations

import hashlib
import json
import time

import httpx
import pytest

from tests.api.helpers import set_status
from tests.api.live_server import live_server

ROWS = [{"instruction": f"Say {i}", "input": "", "output": str(i)} for i in range(7)]
JSONL = ("\n".join(json.dumps(r) for r in ROWS) + "\n").encode()


def upload(client, h, name, data, purpose="finetune", **kw):
    return client.post("/v1/files", files={"file": (name, data)}, data={"purpose": purpose}, headers=h, **kw)


def test_upload_jsonl_and_text(client, new_tenant, service_settings):
    tenant, h = new_tenant
    r = upload(client, h, "train.jsonl", JSONL)
    assert r.status_code == 201, r.text
    f = r.json()
    assert f["id"].startswith("file_") and f["object"] == "file" and f["filename"] == "train.jsonl"
    assert f["size_bytes"] == len(JSONL) and f["sha256"] == hashlib.sha256(JSONL).hexdigest()
    assert f["num_records"] == 7 and f["purpose"] == "finetune" and f["created_at"].endswith("Z")
    stored = service_settings.uploads_dir / tenant / f"{f['id']}.jsonl"
    assert stored.read_bytes() == JSONL
    assert client.get(f"/v1/files/{f['id']}", headers=h).json() == f

    text = "First paragraph.\n\nSecond one, with ünïcode.\r\nThird.\n".encode()
    t = upload(client, h, "corpus.txt", text, purpose="calibration").json()
    # Records of plain text are the paragraphs core reads (blank-line separated): 2 here, not 3 lines.
    from layerprune.core.textdata import load_rows

    assert t["num_records"] == len(load_rows(str(service_settings.uploads_dir / tenant / f"{t['id']}.txt"))) == 2
    assert t["purpose"] == "calibration"
    listed = client.get("/v1/files", headers=h).json()
    assert [x["id"] for x in listed["data"]] == [t["id"], f["id"]] and listed["has_more"] is False
    assert [x["id"] for x in client.get("/v1/files", params={"limit": 1, "after": t["id"]}, headers=h).json()["data"]] == [f["id"]]
    assert [x["id"] for x in client.get("/v1/files", params={"purpose": "finetune"}, headers=h).json()["data"]] == [f["id"]]


OK = b'{"instruction": "i", "output": "o"}'


@pytest.mark.parametrize("data,line", [
    (OK + b'\n{"a": 2\n' + OK + b'\n', 2),  # invalid JSON
    (OK + b'\n\n[1, 2]\n', 3),  # not an object (blank lines still count)
    (OK + b'\n"text"', 2),  # the last line without a newline is checked too
    (OK + b'\n{"b": "\xff\xfe"}\n', 2),  # not UTF-8
])
def test_bad_jsonl_line_is_422_naming_it(client, new_tenant, service_settings, data, line):
    tenant, h = new_tenant
    r = upload(client, h, "bad.jsonl", data)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["param"] == "file" and err["message"].startswith(f"line {line}:")
    assert client.get("/v1/files", headers=h).json()["data"] == []
    folder = service_settings.uploads_dir / tenant
    assert not folder.exists() or list(folder.iterdir()) == []  # no partial file left behind


def test_bad_line_far_into_a_big_file(client, new_tenant):
    _, h = new_tenant
    good = b'{"instruction": "x", "output": "y"}\n' * 30000  # ~1 MB, many network chunks
    r = upload(client, h, "big.jsonl", good + b"oops\n" + good)
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("line 30001:")


def test_other_upload_errors(client, new_tenant):
    _, h = new_tenant
    assert upload(client, h, "e.jsonl", b"").json()["error"]["message"] == "the file has no records"
    assert upload(client, h, "e.txt", b"\n \n").status_code == 422
    r = upload(client, h, "t.txt", b"text", purpose="pretraining")
    assert r.status_code == 422 and r.json()["error"]["param"] == "purpose"
    r = client.post("/v1/files", data={"purpose": "finetune"}, files={"other": ("x", b"y")}, headers=h)
    assert r.status_code == 422 and r.json()["error"]["param"] == "file"
    r = client.post("/v1/files", json={"purpose": "finetune"}, headers=h)
    assert r.status_code == 415
    r = client.post("/v1/files", content=b"--xyz\r\ngarbage", headers={**h, "Content-Type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 422
    assert client.get("/v1/files", headers=h).json()["data"] == []


def test_oversize_is_413_and_nothing_stored(app, new_tenant, service_settings, tmp_path):
    from fastapi.testclient import TestClient

    from layerprune.api.app import create_app

    tenant, h = new_tenant
    small = create_app(service_settings.model_copy(update={"max_upload_bytes": 4096, "data_dir": tmp_path}),
                       start_background=False)
    with TestClient(small) as c:
        assert upload(c, h, "ok.jsonl", JSONL).status_code == 201
        line = b'{"instruction": "x", "output": "y"}\n'

        def body():  # chunked: no Content-Length to refuse early, so the cap is met while streaming
            boundary = b"--b0undary"
            yield boundary + b'\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfinetune\r\n'
            yield boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n'
            for _ in range(400):
                yield line
            yield b"\r\n" + boundary + b"--\r\n"

        r = c.post("/v1/files", content=body(), headers={**h, "Content-Type": "multipart/form-data; boundary=b0undary"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
        r = upload(c, h, "big.jsonl", line * 400)  # with Content-Length: refused before reading
        assert r.status_code == 413
        assert len(c.get("/v1/files", headers=h).json()["data"]) == 1
    left = sorted(p.name for p in (tmp_path / "uploads" / tenant).iterdir())
    # The accepted file and its per-format outcome; no partial upload.
    assert len(left) == 2 and left[0].startswith("file_") and left[0].endswith(".formats.json")
    assert left[1] == left[0].removesuffix(".formats.json") + ".jsonl"


def test_upload_idempotency(client, new_tenant):
    _, h = new_tenant
    hk = {**h, "Idempotency-Key": "upload-1"}
    first = upload(client, hk, "a.jsonl", JSONL)
    assert first.status_code == 201
    again = upload(client, hk, "a.jsonl", JSONL)
    assert again.status_code == 200 and again.json() == first.json()
    other = upload(client, hk, "a.jsonl", JSONL + OK + b"\n")
    assert other.status_code == 409
    assert len(client.get("/v1/files", headers=h).json()["data"]) == 1


def test_delete_conflicts_while_a_live_job_uses_it(client, new_tenant, migrated_db, service_settings):
    tenant, h = new_tenant
    f = upload(client, h, "train.jsonl", JSONL).json()
    spec = {"prune": {"metric": "reverse_order", "ratio": 0.25}, "finetune": {"dataset": f["id"]}}
    job = client.post("/v1/jobs", json=spec, headers=h).json()["id"]
    r = client.delete(f"/v1/files/{f['id']}", headers=h)
    assert r.status_code == 409 and r.json()["error"]["code"] == "file_in_use" and job in r.json()["error"]["message"]
    set_status(migrated_db, job, "running")
    assert client.delete(f"/v1/files/{f['id']}", headers=h).status_code == 409
    set_status(migrated_db, job, "succeeded")
    r = client.delete(f"/v1/files/{f['id']}", headers=h)
    assert r.status_code == 200 and r.json() == {"id": f["id"], "object": "file", "deleted": True}
    assert client.get(f"/v1/files/{f['id']}", headers=h).status_code == 404
    assert client.delete(f"/v1/files/{f['id']}", headers=h).status_code == 404
    assert not (service_settings.uploads_dir / tenant / f"{f['id']}.jsonl").exists()
    r = client.post("/v1/jobs", json=spec, headers=h)  # a deleted file cannot be used any more
    assert r.status_code == 422 and r.json()["error"]["param"] == "finetune.dataset"


def test_an_upload_reaches_disk_while_its_body_is_still_arriving(tmp_path):
    # A real server and a chunked body: after each 256 KiB the file part so far must be on disk
    # (beside its final place, as .part) before the next is sent, so nothing holds the file whole.
    line = (json.dumps({"instruction": "x" * 1000, "output": "y"}) + "\n").encode()
    chunk = line * (256 * 1024 // len(line))
    chunks = 12
    seen: list[int] = []
    with live_server(tmp_path / "data") as server:
        folder = tmp_path / "data" / "uploads" / "live"

        def on_disk() -> int:
            parts = list(folder.glob(".upload-*.part")) if folder.is_dir() else []
            return parts[0].stat().st_size if parts else 0

        def body():
            yield b'--b0undary\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfinetune\r\n'
            yield b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n'
            for i in range(chunks):
                yield chunk
                deadline = time.monotonic() + 10
                while on_disk() < i * len(chunk) and time.monotonic() < deadline:
                    time.sleep(0.02)
                seen.append(on_disk())
            yield b"\r\n--b0undary--\r\n"

        r = httpx.post(f"{server.url}/v1/files", content=body(), timeout=120,
                       headers={**server.headers, "Content-Type": "multipart/form-data; boundary=b0undary"})
        assert r.status_code == 201, r.text
        assert r.json()["size_bytes"] == chunks * len(chunk)
    assert all(size >= i * len(chunk) for i, size in enumerate(seen)), seen
    assert seen[-2] < chunks * len(chunk)  # still arriving: not the whole file yet
