"""Job hooks: progress becomes rate-limited events and the row's overall progress; warnings always land."""

from __future__ import annotations

import threading

from sqlalchemy import select

from layerprune.db.models import Job, JobEvent
from layerprune.db.queue import claim_job
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
