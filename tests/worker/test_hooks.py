"""Job hooks: progress becomes rate-limited events and the row's overall progress; warnings always land."""

from __future__ import annotations

import threading

from sqlalchemy import select

from layerprune.db.models import Job, JobEvent
from layerprune.queue.transitions import claim_job
from layerprune.worker.hooks import JobReporter
from tests.worker.conftest import new_job


def test_progress_is_rate_limited_and_weighted_by_stage(sessions):
    job_id = new_job(sessions)
    with sessions() as s:
        claim_job(s, job_id, "w", 60)
    stop = threading.Event()
    rep = JobReporter(sessions, job_id, "w", ["prune", "finetune", "export"], stop, interval=60)
    hooks = rep.hooks()
    rep.on_stage("finetune")
    for step in range(1, 101):
        hooks.metrics({"step": step, "loss": 1.0 / step, "tokens_per_s": 100.0, "eta_s": 100 - step, "bad": float("nan")})
        hooks.progress(step, 100, f"step {step}")
    hooks.warn("loss spiked", step=50)
    with sessions() as s:
        events = list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)))
        job = s.get(Job, job_id)
    progress = [e for e in events if e.type == "progress"]
    assert len(progress) == 2  # the first and the last (done == total), none in between
    assert progress[-1].data["step"] == 100 and progress[-1].data["bad"] is None
    assert job.stage == "finetune" and abs(job.progress - 2 / 3) < 1e-9
    assert [e.level for e in events if e.type == "warning"] == ["warning"]
    assert hooks.should_stop() is False
    stop.set()
    assert hooks.should_stop() is True


def test_heartbeat_thread_extends_the_lease_and_sees_cancel_and_takeover(sessions):
    import time

    from layerprune.worker.heartbeat import Heartbeat

    def run_until_stopped(job_id: str, change) -> Heartbeat:  # noqa: ANN001
        with sessions() as s:
            claim_job(s, job_id, "w", 1)
            first = s.get(Job, job_id).lease_expires_at
        beat = Heartbeat(sessions, job_id, "w", lease_s=30, interval=0.2, poll=0.1)
        beat.start()
        time.sleep(0.6)
        with sessions() as s:
            assert s.get(Job, job_id, populate_existing=True).lease_expires_at > first  # extended
            s.execute(Job.__table__.update().where(Job.id == job_id).values(**change))
            s.commit()
        assert beat.stop.wait(5)
        beat.close()
        return beat

    assert run_until_stopped(new_job(sessions), {"status": "cancelling"}).reason == "cancelling"
    assert run_until_stopped(new_job(sessions), {"worker_id": "other"}).reason == "lost"
