"""The one sweeper the API and every worker run: reaping, key purge, outbox, start-up retries."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from layerprune.db import idempotency
from layerprune.db.models import IdempotencyKey, Job
from layerprune.queue import celery_app
from layerprune.queue.sweeper import Sweeper, sweep_once
from layerprune.queue.transitions import claim_job
from layerprune.settings import Settings, reset_settings_cache
from tests.worker.conftest import new_job


def _held_with_expired_lease(sessions) -> str:
    job_id = new_job(sessions, max_attempts=3)
    with sessions() as s:
        claim_job(s, job_id, "gone-worker", 30)
        s.execute(Job.__table__.update().where(Job.id == job_id)
                  .values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1)))
        s.commit()
    return job_id


def _keys(sessions) -> list[str]:
    with sessions() as s:
        return sorted(s.scalars(select(IdempotencyKey.key)))


def _remember(sessions, key: str, age: timedelta) -> None:
    with sessions() as s:
        idempotency.remember(s, "t1", key, "d" * 64, "job", "job_x", now=datetime.now(UTC) - age)
        s.commit()


def _filesystem_broker(tmp_path, monkeypatch):
    """Point settings and the Celery app at an embedded broker under ``tmp_path``."""
    monkeypatch.setenv("LAYERPRUNE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("LAYERPRUNE_BROKER_URL", raising=False)
    reset_settings_cache()
    celery_app.configure()
    return tmp_path / "broker" / "queue"


def _restore(monkeypatch):
    monkeypatch.undo()
    reset_settings_cache()
    celery_app.configure()


def test_sweep_once_reaps_purges_and_dispatches(sessions, tmp_path, monkeypatch):
    messages = _filesystem_broker(tmp_path, monkeypatch)
    try:
        lost = _held_with_expired_lease(sessions)
        _remember(sessions, "old", timedelta(hours=25))
        _remember(sessions, "fresh", timedelta(hours=1))
        unsent = new_job(sessions)
        settings = Settings(data_dir=tmp_path, idempotency_ttl_hours=24)

        # The reaper's half alone: the lost job is queued again, the expired key gone, nothing sent.
        res = sweep_once(sessions, settings, dispatch=False)
        assert res == {"reaped": [lost], "purged_keys": 1}
        with sessions() as s:
            assert s.get(Job, lost).status == "queued"
        assert _keys(sessions) == ["fresh"]
        assert not messages.exists() or not any(messages.iterdir())

        # The outbox's half: both queued jobs (the re-queued one has dispatched_at cleared) are sent.
        res = sweep_once(sessions, settings, reap=False)
        assert res == {"dispatched": 2}
        assert len(list(messages.iterdir())) == 2
        with sessions() as s:
            assert {s.get(Job, j).dispatch_count for j in (lost, unsent)} == {1}
        assert sweep_once(sessions, settings) == {"reaped": [], "purged_keys": 0, "dispatched": 0}
    finally:
        _restore(monkeypatch)


def _wait_for(check, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def test_sweeper_thread_waits_for_startup_then_sweeps(sessions, tmp_path, monkeypatch):
    _filesystem_broker(tmp_path, monkeypatch)
    try:
        settings = Settings(data_dir=tmp_path, reaper_interval_seconds=0.2, dispatch_interval_seconds=0.2)
        lost = _held_with_expired_lease(sessions)
        _remember(sessions, "old", timedelta(hours=48))
        calls = []

        def startup() -> bool:  # the database "comes back" on the third try
            calls.append(time.monotonic())
            return len(calls) >= 3

        monkeypatch.setattr("layerprune.queue.sweeper.STARTUP_RETRY_SECONDS", 0.2)
        sweeper = Sweeper(sessions, settings, startup=startup)
        sweeper.start()
        try:
            assert _wait_for(lambda: len(calls) >= 3)
            assert _wait_for(lambda: _keys(sessions) == [])
            assert _wait_for(lambda: _status(sessions, lost) == "queued"
                             and _dispatch_count(sessions, lost) == 1)
            assert len(calls) == 3  # start-up work is not repeated once done
            assert all(b - a >= 0.15 for a, b in zip(calls, calls[1:], strict=False))  # retried at its own pace
        finally:
            sweeper.stop()
        assert not sweeper.is_alive()
    finally:
        _restore(monkeypatch)


def test_sweeper_survives_a_database_outage(sessions, tmp_path, monkeypatch):
    _filesystem_broker(tmp_path, monkeypatch)
    try:
        settings = Settings(data_dir=tmp_path, reaper_interval_seconds=0.2, dispatch_interval_seconds=0.2)
        down = {"on": True}

        def flaky():
            if down["on"]:
                raise ConnectionError("database restarting")
            return sessions()

        sweeper = Sweeper(flaky, settings)
        sweeper.start()
        try:
            time.sleep(0.6)  # a few failed sweeps
            assert sweeper.is_alive()
            lost = _held_with_expired_lease(sessions)
            down["on"] = False
            assert _wait_for(lambda: _status(sessions, lost) == "queued")
        finally:
            sweeper.stop()
    finally:
        _restore(monkeypatch)


def _status(sessions, job_id: str) -> str:
    with sessions() as s:
        return s.get(Job, job_id).status


def _dispatch_count(sessions, job_id: str) -> int:
    with sessions() as s:
        return s.get(Job, job_id).dispatch_count
