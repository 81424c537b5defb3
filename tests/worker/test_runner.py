"""The runner in-process on SQLite: outcomes, model/data set refs, atomic publishing."""

from __future__ import annotations

import errno
import json
import threading

import pytest
from sqlalchemy import select

from layerprune.core.bundled import bundled_text
from layerprune.core.spec import JobSpec
from layerprune.db.models import Artifact, File, Job, JobEvent
from layerprune.queue.transitions import claim_job
from layerprune.settings import Settings
from layerprune.storage import LocalStore
from layerprune.worker.runner import Attempt, run_job
from tests.worker.conftest import new_job

PRUNE = {"metric": "reverse_order", "num_layers": 2}


@pytest.fixture
def env(tmp_path, tiny_root):
    from layerprune.db.migrate import upgrade_to_head
    from layerprune.db.session import dispose_engines, session_factory

    url = f"sqlite:///{tmp_path / 'r.db'}"
    upgrade_to_head(url)
    settings = Settings(data_dir=tmp_path / "data", database_url=url, model_roots=str(tiny_root),
                        heartbeat_seconds=1)
    yield settings, session_factory(url), LocalStore(settings.effective_storage_dir)
    dispose_engines()


def _spec(tiny_root, **body):
    return JobSpec.model_validate({"model": str(tiny_root / "tiny"), **body}).model_dump(mode="json")


def _run(env, job_id):
    settings, sf, store = env
    return run_job(job_id, settings=settings, session_factory=sf, store=store)


def _job(env, job_id) -> Job:
    with env[1]() as s:
        return s.get(Job, job_id)


def test_success_publishes_then_later_messages_are_dropped(env, tiny_root):
    job_id = new_job(env[1], _spec(tiny_root, prune=PRUNE))
    assert _run(env, job_id) == "succeeded"
    job = _job(env, job_id)
    with env[1]() as s:
        arts = {a.path: a for a in s.scalars(select(Artifact).where(Artifact.job_id == job_id))}
    assert {a["path"] for a in job.result["artifacts"]} == set(arts)
    for path, art in arts.items():
        assert env[2].local_path(art.storage_key).stat().st_size == art.size_bytes
        assert art.storage_key == f"t1/{job_id}/{path}"
    assert not (env[0].work_dir / job_id).exists()
    assert _run(env, job_id) is None  # a duplicate message for a finished job does nothing


def test_typed_error_fails_with_code_and_param(env, tiny_root):
    job_id = new_job(env[1], _spec(tiny_root, prune={"metric": "reverse_order", "num_layers": 8}))
    assert _run(env, job_id) == "failed"
    job = _job(env, job_id)
    assert job.error["code"] == "invalid_spec" and "8" in job.error["message"]
    with env[1]() as s:
        last = s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq.desc())).first()
    assert last.data["param"] == "prune.num_layers" and last.level == "error"
    assert not (env[0].effective_storage_dir / "t1" / job_id).exists()


def test_unusable_store_fails_as_storage_error_and_exposes_nothing(env, tiny_root, tmp_path):
    settings, sf, _ = env
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")  # the store's root is a file: publishing must fail
    job_id = new_job(sf, _spec(tiny_root, prune=PRUNE))
    assert run_job(job_id, settings=settings, session_factory=sf, store=LocalStore(blocker)) == "failed"
    job = _job(env, job_id)
    assert job.error["code"] == "storage_error" and job.result is None
    with sf() as s:
        assert s.scalars(select(Artifact).where(Artifact.job_id == job_id)).first() is None


def test_unexpected_error_keeps_its_traceback_in_the_server_log(env, caplog):
    # A stored spec this version cannot read (written by another version): not the user's fault.
    job_id = new_job(env[1], {"model": "x", "prune": {"metric": "no_such_metric"}})
    with caplog.at_level("ERROR", logger="layerprune.worker.runner"):
        assert _run(env, job_id) == "failed"
    job = _job(env, job_id)
    reference = job.error["message"].split("reference ")[1].split(")")[0]
    assert job.error["code"] == "internal_error" and reference.startswith("err_")
    # What the tenant can read (the job and its events) holds no traceback and no exception text.
    with env[1]() as s:
        events = list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id)))
    readable = json.dumps([job.error] + [[e.message, e.data] for e in events])
    assert "Traceback" not in readable and "no_such_metric" not in readable and "ValidationError" not in readable
    assert events[-1].data["reference"] == reference
    # The operators' log record has it all, with the job id and the same reference.
    [record] = [r for r in caplog.records if getattr(r, "error_reference", None) == reference]
    assert record.job_id == job_id and record.exc_info is not None
    assert "no_such_metric" in caplog.text and "Traceback" in caplog.text


def test_job_model_refs_and_tenancy(env, tiny_root):
    first = new_job(env[1], _spec(tiny_root, prune=PRUNE))
    assert _run(env, first) == "succeeded"
    ppl = {"perplexity": {"dataset": "bundled:wikipedia-eval", "seq_len": 32, "max_windows": 1}}
    spec = JobSpec.model_validate({"model": f"job:{first}", "prune": {"metric": "reverse_order", "num_layers": 1},
                                   "evaluate": ppl}).model_dump(mode="json")
    second = new_job(env[1], spec)
    assert _run(env, second) == "succeeded"
    assert _job(env, second).result["num_layers_before"] == 6
    stranger = new_job(env[1], spec, tenant="t2")  # another tenant's job is not found
    assert _run(env, stranger) == "failed"
    assert _job(env, stranger).error["code"] == "model_unavailable"


def test_uploaded_file_refs(env, tiny_root, tmp_path):
    settings, sf, _ = env
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps({"instruction": f"Echo {w}.", "input": "", "output": w})
                              for w in ("a", "b", "c")))
    with sf() as s:
        s.add(File(id="file_ok", tenant="t1", filename="train.jsonl", purpose="finetune", size_bytes=1,
                   sha256="0" * 64, num_records=3, storage_path=str(data)))
        s.commit()
    train = {"method": "partial", "max_steps": 1, "batch_size": 1, "micro_batch_size": 1, "max_seq_len": 256,
             "warmup_steps": 0}
    ok = new_job(sf, _spec(tiny_root, finetune={**train, "dataset": "file_ok"}))
    assert _run(env, ok) == "succeeded"
    for ref, tenant in (("file_missing", "t1"), ("file_ok", "t2")):
        bad = new_job(sf, _spec(tiny_root, finetune={**train, "dataset": ref}), tenant=tenant)
        assert _run(env, bad) == "failed"
        assert _job(env, bad).error["code"] == "invalid_dataset"


def test_an_uploaded_calibration_file_is_resolved_by_the_worker(env, tiny_root, tmp_path):
    settings, sf, _ = env
    text = tmp_path / "calibration.txt"
    text.write_text("\n\n".join(bundled_text("wikipedia-train")[:40]))
    with sf() as s:
        s.add(File(id="file_cal", tenant="t1", filename="calibration.txt", purpose="calibration", size_bytes=1,
                   sha256="0" * 64, num_records=40, storage_path=str(text)))
        s.commit()
    calibration = {"dataset": "file_cal", "num_samples": 2, "seq_len": 16}
    prune = {"metric": "block_influence", "num_layers": 2, "calibration": calibration}
    ok = new_job(sf, _spec(tiny_root, prune=prune))
    assert _run(env, ok) == "succeeded", _job(env, ok).error
    assert _job(env, ok).result["prune"]["calibration"]["dataset"] == str(text)
    for ref, tenant in (("file_missing", "t1"), ("file_cal", "t2")):
        bad = new_job(sf, _spec(tiny_root, prune={**prune, "calibration": {**calibration, "dataset": ref}}),
                      tenant=tenant)
        assert _run(env, bad) == "failed"
        assert _job(env, bad).error["code"] == "invalid_dataset"
        with sf() as s:
            last = s.scalars(select(JobEvent).where(JobEvent.job_id == bad).order_by(JobEvent.seq.desc())).first()
        assert last.data["param"] == "prune.calibration.dataset"


def test_a_stored_request_body_with_service_fields_runs(env, tiny_root):
    """The API stores its whole request body; the worker reads core's spec out of it."""
    stored = {**_spec(tiny_root, prune=PRUNE), "metadata": {"pipeline": "nightly"}, "priority": 3,
              "webhook": {"url": "https://hooks.example/x", "secret": "s3cret"}}
    job_id = new_job(env[1], stored)
    assert _run(env, job_id) == "succeeded"
    assert _job(env, job_id).result["removed_layers"] == [6, 7]


def test_a_full_scratch_disk_fails_as_disk_full(env, tiny_root):
    """ENOSPC while a stage writes scratch files maps through the storage failure path: disk_full."""
    settings, sf, store = env
    job_id = new_job(sf, _spec(tiny_root, prune=PRUNE))
    with sf() as s:
        assert claim_job(s, job_id, "w1", settings.lease_seconds) is not None
    attempt = Attempt(job_id=job_id, worker_id="w1", tenant="t1", raw_spec={}, number=1, settings=settings,
                      sessions=sf, store=store, stop=threading.Event())
    assert attempt._crashed(OSError(errno.ENOSPC, "No space left on device")) == "failed"
    assert _job(env, job_id).error["code"] == "disk_full"
