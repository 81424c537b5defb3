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


# ---------------------------------------------------------------- the transition table, end to end

HOOK_SPEC = {"model": "x", "prune": {"metric": "reverse_order", "ratio": 0.25},
             "webhook": {"url": "https://hooks.example/lp"}}


def _in_status(sessions, status: str, *, attempts: int = 1) -> str:
    """A job in ``status``, held by worker w1 with an expired lease (so claim and reaper may act)."""
    job_id = new_job(sessions, HOOK_SPEC, max_attempts=3)
    with sessions() as s:
        s.execute(Job.__table__.update().where(Job.id == job_id).values(
            status=status, worker_id="w1", attempts=attempts,
            lease_expires_at=datetime.now(UTC) - timedelta(seconds=5)))
        s.commit()
    return job_id


def _cancel(s, job_id: str) -> bool:
    job = s.get(Job, job_id)
    before = job.status
    try:
        after = q.request_cancel(s, job).status
    except q.JobStateConflict:
        s.rollback()
        return False
    s.commit()
    return after != before


# Every function that may change a job's status, run from every status: (name, attempts, call → moved?).
MOVES = [
    ("claim_job", 1, lambda s, j: q.claim_job(s, j, "w2", 30) is not None),
    ("request_cancel", 1, _cancel),
    ("finish_job", 1, lambda s, j: q.finish_job(s, j, "w1", {"ok": 1}, [])),
    ("fail_job", 1, lambda s, j: q.fail_job(s, j, "w1", "boom", "it broke")),
    ("cancel_finish", 1, lambda s, j: q.cancel_finish(s, j, "w1")),
    ("reap_expired", 1, lambda s, j: j in q.reap_expired(s)),
    ("reap_expired (attempts used up)", 3, lambda s, j: j in q.reap_expired(s)),
    ("heartbeat", 1, lambda s, j: (q.heartbeat(s, j, "w1", 30), False)[1]),
    ("mark_dispatched", 1, lambda s, j: (q.mark_dispatched(s, j), False)[1]),
]


def test_each_allowed_transition_works_and_each_other_is_refused(sessions):
    from layerprune.db.models import WebhookDelivery
    from layerprune.queue.status import JOB_STATUSES, TERMINAL_STATUSES, TRANSITIONS, allowed

    seen: set[tuple[str, str]] = set()
    for old in JOB_STATUSES:
        for name, attempts, move in MOVES:
            job_id = _in_status(sessions, old, attempts=attempts)
            with sessions() as s:
                moved = move(s, job_id)
            job = _job(sessions, job_id)
            where = f"{name} from {old}"
            if moved:
                assert allowed(old, job.status), f"{where} made the disallowed move to {job.status}"
                seen.add((old, job.status))
            else:
                assert job.status == old, f"{where} reported no move but the job is {job.status}"
            with sessions() as s:
                hooks = [d.event_type for d in s.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id))]
            # Every move into a terminal status, whoever makes it, adds exactly one delivery.
            expected = [f"job.{job.status}"] if moved and job.status in TERMINAL_STATUSES else []
            assert hooks == expected, where
    table = {(old, new) for old, news in TRANSITIONS.items() for new in news}
    assert seen == {(str(a), str(b)) for a, b in table}, "every allowed move is made by some transition"
