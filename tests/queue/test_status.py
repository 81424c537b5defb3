"""The status table itself, and the client's copy of the terminal statuses."""

from __future__ import annotations

import pytest

from layerprune import client
from layerprune.queue import status
from layerprune.queue.status import JOB_STATUSES, LIVE_STATUSES, TERMINAL_STATUSES, TRANSITIONS, JobStatus


def test_table_covers_every_status_and_terminal_ones_are_final():
    assert set(TRANSITIONS) == set(JobStatus)
    for s in TERMINAL_STATUSES:
        assert TRANSITIONS[s] == frozenset(), f"{s} is terminal: it never changes again"
    for s in LIVE_STATUSES:
        assert TRANSITIONS[s], f"{s} must lead somewhere"
    assert set(LIVE_STATUSES) | set(TERMINAL_STATUSES) == set(JOB_STATUSES)
    assert not set(LIVE_STATUSES) & set(TERMINAL_STATUSES)


def test_every_live_status_can_reach_an_end():
    reach = {s: set(TRANSITIONS[s]) for s in JOB_STATUSES}
    for _ in JOB_STATUSES:
        for s in JOB_STATUSES:
            for t in list(reach[s]):
                reach[s] |= TRANSITIONS[t]
    for s in LIVE_STATUSES:
        assert reach[s] & set(TERMINAL_STATUSES), s


def test_sources_refuses_a_move_the_table_does_not_allow():
    assert status.sources(JobStatus.SUCCEEDED) == ("running",)
    with pytest.raises(ValueError, match="queued → succeeded"):
        status.sources(JobStatus.SUCCEEDED, (JobStatus.QUEUED,))
    assert not status.allowed("succeeded", "queued") and status.allowed("queued", "running")


def test_the_standalone_client_agrees_with_the_table():
    # client.py is vendored alone (httpx and the standard library only), so it keeps its own copy.
    assert client.TERMINAL_STATUSES == frozenset(TERMINAL_STATUSES)


def test_the_api_and_metrics_spell_statuses_from_the_table():
    from layerprune.api.schemas import JobPublic
    from layerprune.metrics import JOB_STATUSES as metric_statuses

    assert JobPublic.model_json_schema()["properties"]["status"]["enum"] == list(JOB_STATUSES)
    assert metric_statuses is JOB_STATUSES
