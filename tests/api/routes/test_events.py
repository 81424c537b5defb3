"""Events as JSON (ordered, cursor) and as server-sent events that end with the job."""

from __future__ import annotations

import json
import threading
import time

from tests.api.helpers import PRUNE


def _add_events(db_url, job_id, n, *, finish=None, delay=0.0):
    from layerprune.db.events import add_event
    from layerprune.db.models import Job, utcnow
    from layerprune.db.session import session_scope

    for i in range(n):
        time.sleep(delay)
        with session_scope(db_url) as s:
            add_event(s, job_id, "progress", f"step {i}", data={"step": i, "loss": 2.0 - i / 10})
    if finish:
        time.sleep(delay)
        with session_scope(db_url) as s:
            job = s.get(Job, job_id)
            job.status = finish
            job.finished_at = utcnow()
            add_event(s, job_id, "state", f"job {finish}", data={"status": finish})


def test_json_events_ordered_with_cursor(client, new_tenant, migrated_db):
    _, h = new_tenant
    job_id = client.post("/v1/jobs", json=PRUNE, headers=h).json()["id"]
    _add_events(migrated_db, job_id, 5)
    page = client.get(f"/v1/jobs/{job_id}/events", headers=h).json()
    events = page["data"]
    assert events[0]["type"] == "created"
    steps = [e["data"]["step"] for e in events if e["type"] == "progress"]
    assert steps == [0, 1, 2, 3, 4]
    for e in events:
        assert set(e) >= {"id", "created_at", "level", "type", "message", "data"} and e["id"].startswith("evt_")
    cut = events[2]["id"]
    rest = client.get(f"/v1/jobs/{job_id}/events", params={"after": cut}, headers=h).json()["data"]
    assert [e["id"] for e in rest] == [e["id"] for e in events[3:]]
    small = client.get(f"/v1/jobs/{job_id}/events", params={"limit": 2}, headers=h).json()
    assert small["has_more"] is True and small["last_id"] == events[1]["id"]
    r = client.get(f"/v1/jobs/{job_id}/events", params={"after": "evt_unknown"}, headers=h)
    assert r.status_code == 422 and r.json()["error"]["param"] == "after"


def _parse_sse(text):
    events = []
    for block in text.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            if line.startswith(":") or ":" not in line:
                continue
            k, _, v = line.partition(":")
            fields[k] = v.lstrip(" ")
        if "data" in fields:
            events.append(fields)
    return events


def test_sse_streams_until_the_job_ends(client, new_tenant, migrated_db):
    _, h = new_tenant
    job_id = client.post("/v1/jobs", json=PRUNE, headers=h).json()["id"]
    writer = threading.Thread(target=_add_events, args=(migrated_db, job_id, 3),
                              kwargs={"finish": "succeeded", "delay": 0.4})
    writer.start()
    started = time.monotonic()
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers={**h, "Accept": "text/event-stream"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    writer.join()
    assert time.monotonic() - started < 30
    events = _parse_sse(text)
    types = [e["event"] for e in events]
    assert types[0] == "created" and types[-2:] == ["state", "end"]
    assert types.count("progress") == 3
    for e in events[:-1]:
        assert json.loads(e["data"])["id"] == e["id"]
    assert json.loads(events[-1]["data"]) == {"status": "succeeded"}

    # Resume after an event with Last-Event-ID: only the later ones come.
    third = events[2]["id"]
    with client.stream("GET", f"/v1/jobs/{job_id}/events",
                       headers={**h, "Accept": "text/event-stream", "Last-Event-ID": third}) as r:
        later = _parse_sse("".join(r.iter_text()))
    assert [e.get("id") for e in later[:-1]] == [e["id"] for e in events[3:-1]]


def test_sse_of_finished_job_ends_at_once(client, new_tenant):
    _, h = new_tenant
    job_id = client.post("/v1/jobs", json=PRUNE, headers=h).json()["id"]
    client.post(f"/v1/jobs/{job_id}/cancel", headers=h)
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers={**h, "Accept": "text/event-stream"}) as r:
        events = _parse_sse("".join(r.iter_text()))
    assert [e["event"] for e in events][-3:] == ["cancel_requested", "state", "end"]
