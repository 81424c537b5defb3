"""A study on Postgres + Redis with TWO real worker processes and the API as a real process: the
candidates spread over both workers, and the shared work (each metric's scores, the base model's
evaluation) is still done once, under the cache's lock."""

from __future__ import annotations

import time

from layerprune.client import LayerPruneClient
from tests.studies.live import Receiver, check_finished_study, small_study


def test_study_with_two_workers(pg_redis_service):
    svc = pg_redis_service
    hook = Receiver()
    try:
        svc.extra_env.update(LAYERPRUNE_WEBHOOK_ALLOWED_HOSTS="127.0.0.1", LAYERPRUNE_WEBHOOK_INTERVAL_SECONDS="0.5")
        url = svc.start_api()
        svc.start_worker()
        svc.start_worker()
        with LayerPruneClient(url, "key-a") as lp:
            study = lp.create_study(small_study(hook.url, speed=True))
            assert study.total == 6
            try:
                study = lp.wait_study(study.id, poll_interval=1.0, timeout=1500)
            except Exception as exc:
                raise AssertionError(f"{exc}\n{svc.logs()}") from None
            events = {c["job_id"]: svc.events(c["job_id"]) for c in study.candidates}
            events[study.baseline["job_id"]] = svc.events(study.baseline["job_id"])
            check_finished_study(study.raw, events)
            # Both workers took part (so the cache's lock, not luck, kept the work single).
            ran = [w for w in svc.workers if "layerprune.run_job" in w.log()]
            assert len(ran) == 2, svc.logs()
            # Speed measured beside each candidate: a speed-up and a speed front.
            assert all(c["results"]["speedup"] and c["results"]["speedup"] > 0 for c in study.candidates)
            assert study.pareto["speed"] and study.baseline["speed"]["decode_tokens_per_s"] > 0
        deadline = time.monotonic() + 30
        while not hook.received and time.monotonic() < deadline:
            time.sleep(0.3)
        assert hook.types() == ["study.succeeded"]
        assert hook.received[0]["body"]["data"]["id"] == study.id
    finally:
        hook.close()
