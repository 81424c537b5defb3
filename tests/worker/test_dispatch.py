"""dispatch: Celery settings for long GPU jobs, broker health, the outbox sweep against a real Redis."""

from __future__ import annotations

import pytest

from layerprune import dispatch
from layerprune.settings import Settings
from tests.worker.conftest import new_job


def test_celery_config_fits_long_jobs(tmp_path):
    conf = dispatch.celery_config(Settings(data_dir=tmp_path, task_soft_time_limit=600, task_time_limit=900))
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1 and conf["worker_max_tasks_per_child"] == 1
    assert conf["accept_content"] == ["json"] and conf["task_serializer"] == "json"
    assert (conf["task_soft_time_limit"], conf["task_time_limit"]) == (600, 900)
    # the embedded transport gets its folders
    assert conf["broker_url"] == "filesystem://" and (tmp_path / "broker" / "queue").is_dir()
    redis = dispatch.celery_config(Settings(data_dir=tmp_path, broker_url="redis://h:1/0", task_time_limit=900))
    assert redis["broker_transport_options"]["visibility_timeout"] > 900


def test_broker_priority_levels():
    levels = [dispatch.broker_priority(p) for p in (100, 50, 49, 10, 9, 5, 4, 1, 0, -1, -4, -5, -9, -10, -49, -50, -100)]
    assert levels == [0, 0, 1, 1, 2, 2, 3, 3, 4, 5, 5, 6, 6, 7, 7, 8, 9]
    # Higher job priority never gets a later level; 0, 1, 5 and 10 are all distinct.
    all_levels = [dispatch.broker_priority(p) for p in range(100, -101, -1)]
    assert all_levels == sorted(all_levels) and len({dispatch.broker_priority(p) for p in (0, 1, 5, 10)}) == 4
    assert set(all_levels) == set(range(dispatch.BROKER_PRIORITY_LEVELS))
    conf = dispatch.celery_config(Settings(broker_url="redis://h:1/0"))
    assert conf["broker_transport_options"]["priority_steps"] == list(range(dispatch.BROKER_PRIORITY_LEVELS))


def test_unknown_queue_refused():
    with pytest.raises(ValueError):
        dispatch.send_job("job_x", "tpu")


def test_outbox_sweep_sends_once_the_broker_is_back(sessions, private_redis, tmp_path, monkeypatch):
    import redis

    monkeypatch.setenv("LAYERPRUNE_BROKER_URL", private_redis.url)
    monkeypatch.setenv("LAYERPRUNE_DATA_DIR", str(tmp_path))
    from layerprune.settings import reset_settings_cache

    reset_settings_cache()
    dispatch.configure()
    try:
        new_job(sessions)
        private_redis.stop()
        assert dispatch.broker_ok(timeout=1) is False
        assert dispatch.dispatch_pending(sessions) == 0  # broker down: nothing marked as sent
        private_redis.start()
        assert dispatch.broker_ok() is True
        assert dispatch.dispatch_pending(sessions) == 1
        assert dispatch.dispatch_pending(sessions) == 0  # sent once, not again
        # One message, in the list of priority 0's level (kombu keeps a list per level).
        client = redis.Redis.from_url(private_redis.url)
        assert sum(client.llen(k) for k in client.keys("cpu*")) == 1
        assert client.llen(f"cpu\x06\x16{dispatch.broker_priority(0)}") == 1
    finally:
        monkeypatch.delenv("LAYERPRUNE_BROKER_URL")
        monkeypatch.delenv("LAYERPRUNE_DATA_DIR")
        reset_settings_cache()
        dispatch.configure()
