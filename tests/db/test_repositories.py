"""The API's repositories on Postgres and SQLite: guarded cancel, keys, idempotency, events."""

from __future__ import annotations

import threading

import pytest

from layerprune.db.session import session_scope


def _job(url, tenant="t"):
    from layerprune.queue.transitions import create_job

    with session_scope(url) as s:
        return create_job(s, tenant, {"prune": {"ratio": 0.25}}, queue="cpu", max_attempts=3).id


def test_cancel_transitions_are_guarded(db):
    from sqlalchemy import select

    from layerprune.db.jobs import get_job
    from layerprune.db.models import Job, JobEvent
    from layerprune.queue.transitions import JobStateConflict, request_cancel

    queued, running = _job(db), _job(db)
    with session_scope(db) as s:
        s.get(Job, running).status = "running"
    with session_scope(db) as s:
        assert request_cancel(s, get_job(s, "t", queued)).status == "cancelled"
        assert request_cancel(s, get_job(s, "t", running)).status == "cancelling"
    with session_scope(db) as s:
        with pytest.raises(JobStateConflict):
            request_cancel(s, get_job(s, "t", queued))
        assert request_cancel(s, get_job(s, "t", running)).status == "cancelling"  # idempotent
        types = s.scalars(select(JobEvent.type).where(JobEvent.job_id == queued).order_by(JobEvent.seq)).all()
        assert types == ["created", "cancel_requested", "state"]
        assert get_job(s, "other-tenant", queued) is None


def test_concurrent_cancels_write_one_transition(db):
    from sqlalchemy import func, select

    from layerprune.db.jobs import get_job
    from layerprune.db.models import JobEvent
    from layerprune.queue.transitions import JobStateConflict, request_cancel

    job_id = _job(db)
    outcomes: list[str] = []

    def cancel():
        try:
            with session_scope(db) as s:
                outcomes.append(request_cancel(s, get_job(s, "t", job_id)).status)
        except JobStateConflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=cancel) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("cancelled") >= 1 and set(outcomes) <= {"cancelled", "conflict"}
    with session_scope(db) as s:
        n = s.scalar(select(func.count()).where(JobEvent.job_id == job_id, JobEvent.type == "state"))
        assert n == 1  # the terminal transition happened exactly once


def test_bootstrap_keys_idempotent_and_concurrent(db):
    from sqlalchemy import func, select

    from layerprune.db.keys import bootstrap_keys, tenant_for_key
    from layerprune.db.models import ApiKey

    pairs = [("a", "key-a"), ("b", "key-b")]

    def boot():
        with session_scope(db) as s:
            bootstrap_keys(s, pairs)

    threads = [threading.Thread(target=boot) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with session_scope(db) as s:
        assert s.scalar(select(func.count()).select_from(ApiKey)) == 2
        assert tenant_for_key(s, "key-a") == "a" and tenant_for_key(s, "nope") is None
        with pytest.raises(ValueError):
            bootstrap_keys(s, [("c", "key-a")])  # one key, two tenants


def test_idempotency_lookup(db):
    from layerprune.db import idempotency

    h1, h2 = idempotency.request_hash({"a": 1, "b": [1, 2]}), idempotency.request_hash({"b": [1, 2], "a": 1})
    assert h1 == h2 != idempotency.request_hash({"a": 2})
    with session_scope(db) as s:
        assert idempotency.lookup(s, "t", "k", h1, "job", 24) is None
        idempotency.remember(s, "t", "k", h1, "job", "job_1")
    with session_scope(db) as s:
        assert idempotency.lookup(s, "t", "k", h1, "job", 24).same_request is True
        assert idempotency.lookup(s, "t", "k", "other", "job", 24).same_request is False
        assert idempotency.lookup(s, "t", "k", h1, "file", 24).same_request is False
        assert idempotency.lookup(s, "u", "k", h1, "job", 24) is None


def test_event_order_and_validation(db):
    from layerprune.db.events import add_event, event_seq, list_events

    job_id = _job(db)
    with session_scope(db) as s:
        ids = [add_event(s, job_id, "progress", str(i), data={"step": i}).id for i in range(5)]
        with pytest.raises(ValueError):
            add_event(s, job_id, "bogus", "x")
        with pytest.raises(ValueError):
            add_event(s, job_id, "log", "x", level="fatal")
    with session_scope(db) as s:
        events = list_events(s, job_id)
        assert [e.type for e in events] == ["created"] + ["progress"] * 5
        assert [e.id for e in list_events(s, job_id, after_seq=event_seq(s, job_id, ids[2]))] == ids[3:]
        assert event_seq(s, "job_other", ids[0]) is None


def test_ids_are_prefixed_and_random():
    from layerprune.db.ids import new_id

    ids = {new_id("job") for _ in range(1000)}
    assert len(ids) == 1000 and all(i.startswith("job_") and len(i) == 28 for i in ids)
