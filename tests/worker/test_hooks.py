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
    shares = rep.job_progress.spans
    assert job.stage == "finetune" and abs(job.progress - sum(shares["finetune"])) < 1e-9
    assert progress[-1].data["stage"] == "finetune" and progress[-1].data["progress"] == job.progress
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


def test_progress_events_carry_part_and_task_and_never_go_backwards(sessions):
    from layerprune.core.progress import within

    job_id = new_job(sessions)
    with sessions() as s:
        claim_job(s, job_id, "w", 60)
    rep = JobReporter(sessions, job_id, "w", ["prune", "evaluate", "export"], threading.Event(), interval=0)
    hooks = rep.hooks()
    rep.on_stage("evaluate")
    before = within(hooks, 0.0, 0.5, part="before")
    before.progress(10, 10, "perplexity")  # the first pass done: half the stage
    after = within(hooks, 0.5, 1.0, part="after")
    after.detail({"task": "piqa", "task_done": 4, "task_total": 25, "tasks": {"piqa": [4, 25]}})
    after.progress(4, 25, "piqa: 4/25 documents")
    hooks.progress(1, 10, "a count that restarted")  # would have been 72% after 75%: held instead
    with sessions() as s:
        events = [e for e in s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq))
                  if e.type == "progress"]
        job = s.get(Job, job_id)
    values = [e.data["progress"] for e in events]
    assert values == sorted(values) and job.progress == values[-1]
    piqa = events[1].data
    assert piqa["stage"] == "evaluate" and piqa["part"] == "after" and piqa["task"] == "piqa"
    assert piqa["task_done"] == 4 and piqa["task_total"] == 25 and piqa["tasks"] == {"piqa": [4, 25]}
    start, share = rep.job_progress.spans["evaluate"]
    assert abs(piqa["progress"] - (start + share * (0.5 + 0.5 * 4 / 25))) < 1e-9


def test_a_retried_attempt_does_not_take_the_progress_back(sessions):
    job_id = new_job(sessions)
    with sessions() as s:
        claim_job(s, job_id, "w", 60)
    first = JobReporter(sessions, job_id, "w", ["prune", "evaluate", "export"], threading.Event(), interval=0)
    first.on_stage("evaluate")
    first.hooks().progress(9, 10, "nearly done")
    reached = first.job_progress.value
    # The next attempt resumes at the start of the stage it had not finished.
    second = JobReporter(sessions, job_id, "w", ["prune", "evaluate", "export"], threading.Event(), interval=0)
    second.on_stage("evaluate")
    second.hooks().progress(1, 10, "started again")
    with sessions() as s:
        assert s.get(Job, job_id).progress == reached
