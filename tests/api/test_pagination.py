"""Paging newest-first stays stable while other requests insert jobs concurrently."""

from __future__ import annotations

import threading

from tests.api.helpers import PRUNE


def test_pages_have_no_duplicates_or_gaps_under_concurrent_inserts(client, app, new_tenant):
    from fastapi.testclient import TestClient

    _, h = new_tenant
    before = [client.post("/v1/jobs", json=PRUNE, headers=h).json()["id"] for _ in range(25)]
    stop = threading.Event()
    inserted: list[str] = []

    def writer():
        with TestClient(app) as c:  # its own client: requests really run concurrently
            while not stop.is_set() and len(inserted) < 40:
                inserted.append(c.post("/v1/jobs", json=PRUNE, headers=h).json()["id"])

    threads = [threading.Thread(target=writer) for _ in range(2)]
    for t in threads:
        t.start()
    seen: list[str] = []
    after = None
    try:
        while True:
            params = {"limit": 3} | ({"after": after} if after else {})
            page = client.get("/v1/jobs", params=params, headers=h).json()
            seen += [j["id"] for j in page["data"]]
            if not page["has_more"]:
                break
            after = page["last_id"]
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert len(seen) == len(set(seen)), "a job appeared twice"
    # Every job that existed when paging began is seen, in newest-first order.
    assert [i for i in seen if i in set(before)] == list(reversed(before))
    assert set(seen) <= set(before) | set(inserted)
    assert inserted, "the writers inserted nothing while paging"
