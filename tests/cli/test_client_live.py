"""The Python client against a live ``layerprune serve`` (and worker) process."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from layerprune.client import (
    Job,
    JobCancelled,
    LayerPruneAPIError,
    LayerPruneClient,
)
from tests.cli.conftest import KEY_A, KEY_B, REPO, Live, prune_spec, queued_spec


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class RecordingTransport(httpx.HTTPTransport):
    """A real HTTP transport that remembers the requests it sent (to see Range headers)."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return super().handle_request(request)


def test_cancel_a_queued_job(live: Live) -> None:
    with LayerPruneClient(live.url, KEY_A, max_retries=1) as lp:
        job = lp.create_job(queued_spec(live, metadata={"case": "cancel"}))
        assert job.id.startswith("job_") and job.status == "queued"
        cancelled = lp.cancel_job(job.id)
        assert cancelled.status == "cancelled"
        with pytest.raises(JobCancelled) as exc:
            lp.wait(job.id, poll_interval=0.1, timeout=10)
        assert exc.value.job.status == "cancelled"
        with pytest.raises(LayerPruneAPIError) as again:
            lp.cancel_job(job.id)
        assert again.value.status == 409


def test_idempotent_create_and_conflict(live: Live) -> None:
    key = f"test-{uuid.uuid4().hex}"
    spec = queued_spec(live, metadata={"case": "idem"})
    with LayerPruneClient(live.url, KEY_A) as lp:
        first = lp.create_job(spec, idempotency_key=key)
        second = lp.create_job(spec, idempotency_key=key)
        assert second.id == first.id
        with pytest.raises(LayerPruneAPIError) as exc:
            lp.create_job({**spec, "priority": 5}, idempotency_key=key)
        assert exc.value.status == 409
        lp.cancel_job(first.id)


def test_errors_carry_status_code_and_param(live: Live) -> None:
    with LayerPruneClient(live.url, KEY_A) as lp:
        with pytest.raises(LayerPruneAPIError) as exc:
            lp.create_job({"model": str(live.model_dir), "prune": {"ratio": 1.5}})
        assert exc.value.status == 422
        assert exc.value.param == "prune.ratio"
        assert exc.value.code and exc.value.message
    with LayerPruneClient(live.url, "not-a-key") as lp:
        with pytest.raises(LayerPruneAPIError) as exc:
            lp.list_jobs()
        assert exc.value.status == 401


def test_other_tenants_jobs_are_404(live: Live) -> None:
    with LayerPruneClient(live.url, KEY_A) as a, LayerPruneClient(live.url, KEY_B) as b:
        job = a.create_job(queued_spec(live, metadata={"case": "tenant"}))
        with pytest.raises(LayerPruneAPIError) as exc:
            b.get_job(job.id)
        assert exc.value.status == 404
        assert job.id not in {j.id for j in b.iter_jobs()}
        a.cancel_job(job.id)


def test_list_pages_and_filters(live: Live) -> None:
    batch = uuid.uuid4().hex[:8]
    with LayerPruneClient(live.url, KEY_A) as lp:
        created = [lp.create_job(queued_spec(live, metadata={"batch": batch})) for _ in range(3)]
        page = lp.list_jobs(metadata={"batch": batch}, limit=2)
        assert [j.id for j in page.data] == [created[2].id, created[1].id]  # newest first
        assert page.has_more and page.last_id == created[1].id
        rest = lp.list_jobs(metadata={"batch": batch}, limit=2, after=page.last_id)
        assert [j.id for j in rest.data] == [created[0].id] and not rest.has_more
        assert [j.id for j in lp.iter_jobs(metadata={"batch": batch}, page_size=1)] == [
            c.id for c in created[::-1]
        ]
        for job in created:
            lp.cancel_job(job.id)
        assert {j.id for j in lp.iter_jobs(status="cancelled", metadata={"batch": batch})} == {
            c.id for c in created
        }


def test_upload_get_and_delete_a_file(live: Live, tmp_path: Path) -> None:
    rows = [{"instruction": f"Say {i}.", "input": "", "output": str(i)} for i in range(5)]
    good = tmp_path / "alpaca.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in rows))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n{not json\n")
    with LayerPruneClient(live.url, KEY_A) as lp:
        f = lp.upload_file(good, "finetune")
        assert f.id.startswith("file_") and f.filename == "alpaca.jsonl"
        assert f.sha256 == _sha(good) and f.size_bytes == good.stat().st_size and f.purpose == "finetune"
        assert f.num_records == 5
        assert lp.get_file(f.id).sha256 == f.sha256
        assert f.id in {x.id for x in lp.list_files().data}
        lp.delete_file(f.id)
        with pytest.raises(LayerPruneAPIError) as exc:
            lp.get_file(f.id)
        assert exc.value.status == 404
        with pytest.raises(LayerPruneAPIError) as exc:
            lp.upload_file(bad, "finetune")
        assert exc.value.status == 422


def test_upload_with_a_declared_format(live: Live, tmp_path: Path) -> None:
    dolly = tmp_path / "dolly.jsonl"
    dolly.write_text("".join(json.dumps({"instruction": f"Say {i}.", "context": "", "response": str(i)}) + "\n"
                             for i in range(3)))
    with LayerPruneClient(live.url, KEY_A) as lp:
        f = lp.upload_file(dolly, "finetune", format="dolly")
        assert f.num_records == 3 and f.formats == ["dolly"]
        assert lp.get_file(f.id).formats == ["dolly"]
        assert lp.upload_file(dolly, "finetune").formats == ["dolly"]  # format is optional
        # Declared, the format must fit every record: the first line that does not is named.
        with pytest.raises(LayerPruneAPIError) as exc:
            lp.upload_file(dolly, "finetune", format="alpaca")
        assert exc.value.status == 422 and exc.value.param == "file" and "line 1" in exc.value.message
        assert "alpaca" in exc.value.message
        # An unknown name, or a format for a purpose that has none to choose: 422 naming the field.
        for purpose, fmt in (("finetune", "sharegpt"), ("calibration", "alpaca")):
            with pytest.raises(LayerPruneAPIError) as exc:
                lp.upload_file(dolly, purpose, format=fmt)
            assert exc.value.status == 422 and exc.value.param == "format", (purpose, fmt, exc.value.message)
        assert [x.id for x in lp.list_files().data if x.filename == "dolly.jsonl"].count(f.id) == 1


def test_wait_download_resume_and_verify(live_worker: Live, tmp_path: Path) -> None:
    live = live_worker
    seen: list[Job] = []
    with LayerPruneClient(live.url, KEY_A) as lp:
        job = lp.create_job(prune_spec(live, metadata={"case": "download"}))
        done = lp.wait(job.id, on_progress=seen.append, poll_interval=0.3, timeout=240)
        assert done.status == "succeeded" and done.is_terminal
        assert seen and seen[-1].status == "succeeded"
        assert done.result is not None
        assert done.result["num_layers_before"] == 8 and done.result["num_layers_after"] == 6
        assert done.result["removed_layers"] == [6, 7]

        arts = lp.artifacts(job.id)
        names = {a.path for a in arts}
        assert "config.json" in names and any(n.endswith(".safetensors") for n in names)
        dest = tmp_path / "model"
        paths = lp.download(job.id, dest)
        by_path = {a.path: a for a in arts}
        for p in paths:
            rel = p.relative_to(dest.resolve()).as_posix()
            assert _sha(p) == by_path[rel].sha256
        assert not list(dest.rglob("*.part"))
        from transformers import AutoConfig

        assert AutoConfig.from_pretrained(dest).num_hidden_layers == 6

        # Already complete: nothing is fetched again.
        weights = next(p for p in paths if p.name.endswith(".safetensors"))
        before = weights.stat().st_mtime_ns
        lp.download(job.id, dest)
        assert weights.stat().st_mtime_ns == before

    # Interrupted download: half a .part file is resumed with a Range request.
    expected = _sha(weights)
    data = weights.read_bytes()
    weights.unlink()
    part = weights.with_name(weights.name + ".part")
    part.write_bytes(data[: len(data) // 2])
    transport = RecordingTransport()
    with LayerPruneClient(live.url, KEY_A, transport=transport) as lp:
        lp.download(job.id, dest)
    assert _sha(weights) == expected and not part.exists()
    ranges = [r.headers.get("Range") for r in transport.requests if r.url.path.endswith(weights.name)]
    assert ranges == [f"bytes={len(data) // 2}-"]

    # A corrupt partial file fails the hash check, is thrown away and fetched whole.
    weights.unlink()
    part.write_bytes(b"\0" * (len(data) // 2))
    with LayerPruneClient(live.url, KEY_A, transport=RecordingTransport()) as lp:
        lp.download(job.id, dest)
    assert _sha(weights) == expected and not part.exists()


def test_events_json_and_stream(live_worker: Live) -> None:
    live = live_worker
    with LayerPruneClient(live.url, KEY_A) as lp:
        job = lp.create_job(prune_spec(live, metadata={"case": "events"}))
        streamed = list(lp.stream_events(job.id))  # ends when the job ends
        assert lp.get_job(job.id).status == "succeeded"
        listed = lp.events(job.id)
        assert [e.id for e in streamed] == [e.id for e in listed]
        types = [e.type for e in listed]
        assert types[0] == "created" and "stage" in types and "state" in types
        assert all(e.id.startswith("evt_") for e in listed)
        # after= resumes from a cursor without repeats
        assert [e.id for e in lp.events(job.id, after=listed[1].id)] == [e.id for e in listed[2:]]


def test_create_retries_after_connection_errors_then_raises(live: Live) -> None:
    from tests.cli.conftest import free_port

    with LayerPruneClient(f"http://127.0.0.1:{free_port()}", KEY_A, max_retries=2, backoff=0.01) as lp:
        with pytest.raises(httpx.ConnectError):
            lp.create_job(prune_spec(live))
        assert lp.health() is False
    with LayerPruneClient(live.url, KEY_A) as lp:
        assert lp.health() is True


def test_keys_create_prints_a_working_key(live: Live) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "layerprune.cli", "keys", "create", "tenant-c"],
        env=live.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    assert key and "\n" not in key and "not shown again" in done.stderr
    with LayerPruneClient(live.url, key) as lp:
        assert lp.list_jobs().data == []  # a new tenant sees none of tenant-a's jobs
