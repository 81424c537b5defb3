"""The Celery app's settings for long GPU jobs, broker health, and the outbox (against a real Redis)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from layerprune.db.models import Job
from layerprune.queue import celery_app, outbox
from layerprune.queue.transitions import claim_job, mark_dispatched
from layerprune.settings import Settings
from tests.worker.conftest import new_job


def test_celery_config_fits_long_jobs(tmp_path):
    conf = celery_app.celery_config(Settings(data_dir=tmp_path, task_soft_time_limit=600, task_time_limit=900))
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1 and conf["worker_max_tasks_per_child"] == 1
    assert conf["accept_content"] == ["json"] and conf["task_serializer"] == "json"
    assert (conf["task_soft_time_limit"], conf["task_time_limit"]) == (600, 900)
    # the embedded transport gets its folders
    assert conf["broker_url"] == "filesystem://" and (tmp_path / "broker" / "queue").is_dir()
    redis = celery_app.celery_config(Settings(data_dir=tmp_path, broker_url="redis://h:1/0", task_time_limit=900))
    assert redis["broker_transport_options"]["visibility_timeout"] > 900


def test_broker_priority_levels():
    levels = [celery_app.broker_priority(p) for p in (100, 50, 49, 10, 9, 5, 4, 1, 0, -1, -4, -5, -9, -10, -49, -50, -100)]
    assert levels == [0, 0, 1, 1, 2, 2, 3, 3, 4, 5, 5, 6, 6, 7, 7, 8, 9]
    # Higher job priority never gets a later level; 0, 1, 5 and 10 are all distinct.
    all_levels = [celery_app.broker_priority(p) for p in range(100, -101, -1)]
    assert all_levels == sorted(all_levels) and len({celery_app.broker_priority(p) for p in (0, 1, 5, 10)}) == 4
    assert set(all_levels) == set(range(celery_app.BROKER_PRIORITY_LEVELS))
    conf = celery_app.celery_config(Settings(broker_url="redis://h:1/0"))
    assert conf["broker_transport_options"]["priority_steps"] == list(range(celery_app.BROKER_PRIORITY_LEVELS))


def test_unknown_queue_refused():
    with pytest.raises(ValueError):
        celery_app.send_job("job_x", "tpu")


def test_outbox_sweep_sends_once_the_broker_is_back(sessions, private_redis, tmp_path, monkeypatch):
    import redis

    monkeypatch.setenv("LAYERPRUNE_BROKER_URL", private_redis.url)
    monkeypatch.setenv("LAYERPRUNE_DATA_DIR", str(tmp_path))
    from layerprune.settings import reset_settings_cache

    reset_settings_cache()
    celery_app.configure()
    try:
        new_job(sessions)
        private_redis.stop()
        assert celery_app.broker_ok(timeout=1) is False
        assert outbox.dispatch_pending(sessions) == 0  # broker down: nothing marked as sent
        private_redis.start()
        assert celery_app.broker_ok() is True
        assert outbox.dispatch_pending(sessions) == 1
        assert outbox.dispatch_pending(sessions) == 0  # sent once, not again
        # One message, in the list of priority 0's level (kombu keeps a list per level).
        client = redis.Redis.from_url(private_redis.url)
        assert sum(client.llen(k) for k in client.keys("cpu*")) == 1
        assert client.llen(f"cpu\x06\x16{celery_app.broker_priority(0)}") == 1
    finally:
        monkeypatch.delenv("LAYERPRUNE_BROKER_URL")
        monkeypatch.delenv("LAYERPRUNE_DATA_DIR")
        reset_settings_cache()
        celery_app.configure()


def test_outbox_redispatch_backs_off(sessions):
    job_id = new_job(sessions)
    with sessions() as s:
        assert outbox.pending_dispatch(s, 10, redispatch_after_s=60) == [(job_id, "cpu", 0)]
        mark_dispatched(s, job_id)
        assert outbox.pending_dispatch(s, 10, redispatch_after_s=60) == []
        past = datetime.now(UTC) - timedelta(seconds=90)
        s.execute(Job.__table__.update().values(dispatched_at=past))
        s.commit()
        assert outbox.pending_dispatch(s, 10, redispatch_after_s=60) == [(job_id, "cpu", 0)]
        mark_dispatched(s, job_id)
        s.execute(Job.__table__.update().values(dispatched_at=past))  # 2nd send: waits 120 s now
        s.commit()
        assert outbox.pending_dispatch(s, 10, redispatch_after_s=60) == []
        claim_job(s, job_id, "w", 30)
        assert mark_dispatched(s, job_id) is False
        assert outbox.pending_dispatch(s, 10, redispatch_after_s=0.001) == []
