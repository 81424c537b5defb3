"""The queue's transitions on SQLite and Postgres: atomic claims, leases, reaping, the status table."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from layerprune.db.models import Artifact, Job, JobEvent
from layerprune.queue import transitions as q
from layerprune.queue.outbox import pending_dispatch
from tests.worker.conftest import new_job


def _job(sessions, job_id) -> Job:
    with sessions() as s:
        return s.get(Job, job_id)


def _events(sessions, job_id) -> list[str]:
    with sessions() as s:
        return [e.type for e in s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq))]


def test_claim_is_exclusive_under_concurrency(sessions):
    job_id = new_job(sessions)
    winners: list[str] = []
    barrier = threading.Barrier(4)

    def claim(n: int) -> None:
        barrier.wait()
        with sessions() as s:
            if q.claim_job(s, job_id, f"w{n}", 30) is not None:
                winners.append(f"w{n}")

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    job = _job(sessions, job_id)
    assert (job.status, job.attempts, job.worker_id) == ("running", 1, winners[0])
    assert job.lease_expires_at > datetime.now(UTC)
    assert _events(sessions, job_id).count("state") == 1


def test_heartbeat_and_cancel_signal(sessions):
    job_id = new_job(sessions)
    with sessions() as s:
        q.claim_job(s, job_id, "w1", 30)
        assert q.heartbeat(s, job_id, "w1", 30) is True
        assert q.heartbeat(s, job_id, "w2", 30) is False  # not its job
        s.execute(Job.__table__.update().where(Job.id == job_id).values(status="cancelling"))
        s.commit()
        assert q.heartbeat(s, job_id, "w1", 30) is False  # cancelling: stop
        assert q.cancel_finish(s, job_id, "w1") is True
    assert _job(sessions, job_id).status == "cancelled"


def test_terminal_states_never_change(sessions):
    job_id = new_job(sessions)
    with sessions() as s:
        q.claim_job(s, job_id, "w1", 30)
        assert q.finish_job(s, job_id, "w1", {"ok": 1}, [
            {"path": "a.txt", "size_bytes": 3, "sha256": "0" * 64, "storage_key": "t1/x/a.txt"}])
        assert q.fail_job(s, job_id, "w1", "x", "y") is False
        assert q.cancel_finish(s, job_id, "w1") is False
        assert q.finish_job(s, job_id, "w1", {}, []) is False
        assert q.claim_job(s, job_id, "w2", 30) is None
        assert q.reap_expired(s, datetime.now(UTC) + timedelta(days=1)) == []
        arts = list(s.scalars(select(Artifact).where(Artifact.job_id == job_id)))
    job = _job(sessions, job_id)
    assert (job.status, job.result, job.progress) == ("succeeded", {"ok": 1}, 1.0)
    assert [a.path for a in arts] == ["a.txt"]
    assert _events(sessions, job_id)[-2:] == ["artifact", "state"]


def test_reaper_requeues_then_fails_worker_lost(sessions):
    job_id = new_job(sessions, max_attempts=2)
    later = datetime.now(UTC) + timedelta(seconds=60)
    with sessions() as s:
        q.mark_dispatched(s, job_id)
        q.claim_job(s, job_id, "w1", 5)
        assert q.reap_expired(s) == []  # lease still valid
        assert q.reap_expired(s, later) == [job_id]
    job = _job(sessions, job_id)
    assert (job.status, job.worker_id, job.dispatched_at) == ("queued", None, None)
    with sessions() as s:
        assert pending_dispatch(s, 10) == [(job_id, "cpu", 0)]
        # the dead worker cannot finish it any more
        assert q.finish_job(s, job_id, "w1", {}, []) is False
        q.claim_job(s, job_id, "w2", 5)
        assert q.reap_expired(s, later) == [job_id]
    job = _job(sessions, job_id)
    assert job.status == "failed" and job.error["code"] == "worker_lost"
    assert "retry" in _events(sessions, job_id)


def test_reaper_finishes_cancelling_and_claim_takes_over_expired(sessions):
    a, b = new_job(sessions), new_job(sessions)
    with sessions() as s:
        q.claim_job(s, a, "w1", 30)
        s.execute(Job.__table__.update().where(Job.id == a).values(status="cancelling"))
        q.claim_job(s, b, "w1", 30)
        s.execute(Job.__table__.update().values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1)))
        s.commit()
        assert q.claim_job(s, b, "w2", 30) is not None  # expired lease: taken over directly
        assert q.reap_expired(s) == [a]
    assert _job(sessions, a).status == "cancelled"
    assert (_job(sessions, b).worker_id, _job(sessions, b).attempts) == ("w2", 2)
