"""cli.follow against a real API (the embedded app served by uvicorn in this process, on a free
port): a finished job is replayed without a stream; a running job is followed over server-sent
events to its end with every event drawn once, in order, and so it is where the server refuses
the stream (the JSON events are polled instead); an unknown job is an error."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from layerprune.cli.follow import follow
from layerprune.cli.progress import ProgressView
from layerprune.client import LayerPruneAPIError, LayerPruneClient
from tests.api.helpers import PRUNE
from tests.service_fixtures import service_env

KEY = "lp_follow_key_0123456789"
SSE = {"enabled": True, "served": 0, "refused": 0}  # switched off by a test: streams are then refused


def sse_switch(app: Any) -> Any:
    """The app, answering 501 to ``Accept: text/event-stream`` while ``SSE["enabled"]`` is off
    (a contract-conforming server without the stream, or a proxy that refuses it)."""

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        accept = dict(scope.get("headers") or []).get(b"accept", b"")
        wants_stream = scope["type"] == "http" and b"text/event-stream" in accept
        if wants_stream and SSE["enabled"]:
            SSE["served"] += 1
        elif wants_stream:
            SSE["refused"] += 1
            body = b'{"error": {"code": "not_implemented", "message": "no event streams here", "param": null}}'
            await send({"type": "http.response.start", "status": 501,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)

    return wrapped


class RecordingView(ProgressView):
    def __init__(self) -> None:
        super().__init__(io.StringIO(), tty=False)
        self.events: list[tuple[str, Any]] = []
        self.statuses: list[str] = []

    def on_event(self, event) -> None:  # type: ignore[no-untyped-def]
        self.events.append((event.type, event.data.get("step")))
        super().on_event(event)

    def on_job(self, job) -> None:  # type: ignore[no-untyped-def]
        self.statuses.append(job.status)
        super().on_job(job)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LayerPruneClient, str]]:
    import uvicorn

    from layerprune.api.app import create_app
    from layerprune.settings import Settings

    data_dir = tmp_path_factory.mktemp("follow")
    settings = Settings(data_dir=data_dir, key_secret="k" * 32, api_keys=f"t1:{KEY}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with service_env(data_dir=data_dir, database_url=None, broker_url=None, storage_url=None):
        server = uvicorn.Server(uvicorn.Config(sse_switch(create_app(settings, start_background=False)),
                                               host="127.0.0.1",
                                               port=port, log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the API did not start"
            time.sleep(0.05)
        try:
            yield LayerPruneClient(f"http://127.0.0.1:{port}", KEY, timeout=10), settings.effective_database_url
        finally:
            server.should_exit = True
            thread.join(10)


def add_progress(url: str, job_id: str, steps: range, *, finish: str | None = None, delay: float = 0.0) -> None:
    from layerprune.db.events import add_event
    from layerprune.db.models import Job, utcnow
    from layerprune.db.session import session_scope

    for i in steps:
        time.sleep(delay)
        with session_scope(url) as s:
            add_event(s, job_id, "progress", f"step {i}", data={"step": i, "progress": (i + 1) / 10})
    if finish:
        time.sleep(delay)
        with session_scope(url) as s:
            job = s.get(Job, job_id)
            job.status, job.finished_at, job.progress = finish, utcnow(), 1.0
            add_event(s, job_id, "state", f"job {finish}", data={"status": finish})


def recorded(client: LayerPruneClient, job_id: str) -> list[tuple[str, Any]]:
    """The job's events as the JSON endpoint lists them (created, dispatched, progress…, state)."""
    return [(e.type, e.data.get("step")) for e in client.events(job_id)]


def test_a_finished_job_is_replayed(api) -> None:  # type: ignore[no-untyped-def]
    client, url = api
    job_id = client.create_job(PRUNE).id
    add_progress(url, job_id, range(3), finish="failed")
    view = RecordingView()
    job = follow(client, job_id, view, poll_interval=0.1)
    assert job.status == "failed"
    assert view.events == recorded(client, job_id)
    assert [step for kind, step in view.events if kind == "progress"] == [0, 1, 2]
    assert view.events[-1] == ("state", None)
    assert view.statuses == ["failed"]


def test_a_running_job_is_followed_to_its_end_with_each_event_once(api) -> None:  # type: ignore[no-untyped-def]
    client, url = api
    job_id = client.create_job(PRUNE).id
    add_progress(url, job_id, range(2))  # before following: replayed from the stream's start
    writer = threading.Thread(target=add_progress, args=(url, job_id, range(2, 6)),
                              kwargs={"finish": "succeeded", "delay": 0.3})
    writer.start()
    view = RecordingView()
    served = SSE["served"]
    started = time.monotonic()
    job = follow(client, job_id, view, poll_interval=0.1)
    writer.join()
    assert job.status == "succeeded" and job.is_terminal
    assert view.events == recorded(client, job_id)  # each event once, in the job's order
    assert [step for kind, step in view.events if kind == "progress"] == list(range(6))
    assert view.statuses[0] == "queued" and view.statuses[-1] == "succeeded"
    assert view.progress == 1.0
    assert time.monotonic() - started < 20
    assert SSE["served"] == served + 1  # one stream, never dropped


def test_without_the_stream_the_json_events_are_polled(api) -> None:  # type: ignore[no-untyped-def]
    client, url = api
    job_id = client.create_job(PRUNE).id
    add_progress(url, job_id, range(2))
    writer = threading.Thread(target=add_progress, args=(url, job_id, range(2, 5)),
                              kwargs={"finish": "cancelled", "delay": 0.3})
    SSE["enabled"] = False
    try:
        writer.start()
        view = RecordingView()
        job = follow(client, job_id, view, poll_interval=0.1)
        writer.join()
    finally:
        SSE["enabled"] = True
    assert job.status == "cancelled"
    assert view.events == recorded(client, job_id)  # the cursor moved on: nothing twice, nothing lost
    assert [step for kind, step in view.events if kind == "progress"] == list(range(5))
    assert view.statuses[-1] == "cancelled"
    assert SSE["refused"] == 1  # refused once, not retried


def test_an_unknown_job_is_an_error(api) -> None:  # type: ignore[no-untyped-def]
    client, _ = api
    with pytest.raises(LayerPruneAPIError) as err:
        follow(client, "job_" + "z" * 24, RecordingView())
    assert err.value.status == 404
