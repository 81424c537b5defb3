"""db.files: which spec fields name uploaded files, and the tenant-scoped file queries
(on SQLite and Postgres, through the ``db`` fixture)."""

from __future__ import annotations

from datetime import UTC, datetime

from layerprune.db import files
from layerprune.db.models import File, Job
from layerprune.db.session import session_scope


def test_file_refs_names_each_field_holding_a_file_id() -> None:
    spec = {"finetune": {"dataset": "file_abc"},
            "prune": {"calibration": {"dataset": "wikitext"}},  # a data set name, not a file
            "evaluate": {"perplexity": {"dataset": "file_def"}, "gsm8k_train": "file_ghi"}}
    assert files.file_refs(spec) == {"finetune.dataset": "file_abc", "evaluate.perplexity.dataset": "file_def",
                                     "evaluate.gsm8k_train": "file_ghi"}
    # Shapes a spec may take before validation: absent sections, a list where a dict was, non-strings.
    assert files.file_refs({}) == {}
    assert files.file_refs({"finetune": ["file_abc"], "prune": {"calibration": None}}) == {}
    assert files.file_refs({"finetune": {"dataset": 7}, "evaluate": {"gsm8k_train": "filex_1"}}) == {}


def _file(tenant: str, name: str, purpose: str = "finetune", deleted: bool = False) -> File:
    return File(tenant=tenant, filename=name, purpose=purpose, size_bytes=10, sha256="0" * 64, num_records=1,
                storage_path=f"files/{name}", deleted_at=datetime.now(UTC) if deleted else None)


def test_file_queries_are_scoped_to_the_tenant_and_skip_deleted_files(db: str) -> None:
    with session_scope(db) as s:
        mine = [_file("t1", f"f{i}.jsonl", purpose="finetune" if i % 2 else "evaluate") for i in range(5)]
        gone = _file("t1", "gone.jsonl", deleted=True)
        theirs = _file("t2", "other.jsonl")
        s.add_all([*mine, gone, theirs])
        s.flush()
        ids = [f.id for f in mine]
        gone_id, theirs_id = gone.id, theirs.id
    with session_scope(db) as s:
        assert files.get_file(s, "t1", ids[0]).filename == "f0.jsonl"
        assert files.get_file(s, "t1", gone_id) is None  # deleted
        assert files.get_file(s, "t1", theirs_id) is None  # another tenant's
        assert files.get_file(s, "t1", "job_" + ids[0][5:]) is None  # not a file id at all
        assert files.get_file(s, "t1", "file_\x00") is None
        # The sequence of a deleted file is still known (a page cursor may point at it).
        assert files.file_seq(s, "t1", gone_id) is not None
        assert files.file_seq(s, "t2", ids[0]) is None
        assert files.file_seq(s, "t1", "nonsense") is None

        page = files.list_files(s, "t1", limit=2)
        assert [f.id for f in page.items] == [ids[4], ids[3]] and page.has_more  # newest first
        cursor = files.file_seq(s, "t1", ids[3])
        rest = files.list_files(s, "t1", limit=10, after_seq=cursor)
        assert [f.id for f in rest.items] == [ids[2], ids[1], ids[0]] and not rest.has_more
        assert [f.id for f in files.list_files(s, "t1", purpose="evaluate").items] == [ids[4], ids[2], ids[0]]
        assert files.list_files(s, "t3").items == []


def test_live_jobs_using_a_file(db: str) -> None:
    fid = "file_" + "a" * 24
    spec = {"prune": {"metric": "taylor", "calibration": {"dataset": fid}}}
    with session_scope(db) as s:
        jobs = {status: Job(tenant="t1", status=status, spec=spec)
                for status in ("queued", "running", "cancelling", "succeeded", "failed", "cancelled")}
        other_spec = Job(tenant="t1", status="queued", spec={"finetune": {"dataset": "file_" + "b" * 24}})
        other_tenant = Job(tenant="t2", status="running", spec=spec)
        s.add_all([*jobs.values(), other_spec, other_tenant])
        s.flush()
        live = {jobs[k].id for k in ("queued", "running", "cancelling")}
    with session_scope(db) as s:
        assert set(files.live_jobs_using(s, "t1", fid)) == live
        assert files.live_jobs_using(s, "t3", fid) == []
