"""Retries are safe: a create whose response was lost is retried with the same Idempotency-Key and
yields exactly one job. A real TCP proxy in front of the live server loses the responses."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

from layerprune.client import LayerPruneClient
from tests.cli.conftest import KEY_A, Live, queued_spec


def _read_http_message(sock: socket.socket) -> bytes:
    """One HTTP/1.1 message with a Content-Length body (what httpx and uvicorn send here)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


@contextmanager
def lossy_proxy(target_url: str, lose: int) -> Iterator[tuple[str, list[int]]]:
    """Forward each request to the server; for the first ``lose`` connections, drop its answer."""
    target = urlparse(target_url)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    statuses: list[int] = []  # the server's status for every forwarded request
    stop = threading.Event()
    count = 0

    def handle(client: socket.socket, drop: bool) -> None:
        with client, socket.create_connection((target.hostname, target.port), timeout=30) as upstream:
            client.settimeout(30)
            while True:
                request = _read_http_message(client)
                if not request:
                    return
                upstream.sendall(request)
                response = _read_http_message(upstream)
                statuses.append(int(response.split(b" ", 2)[1]))
                if drop:
                    return  # the server did the work; the client never hears of it
                client.sendall(response)

    def serve() -> None:
        nonlocal count
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            count += 1
            threading.Thread(target=handle, args=(client, count <= lose), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", statuses
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_a_lost_create_response_is_retried_into_the_same_job(live: Live) -> None:
    run = uuid.uuid4().hex[:8]
    with lossy_proxy(live.url, lose=2) as (url, statuses):
        with LayerPruneClient(url, KEY_A, max_retries=4, backoff=0.05) as lp:
            job = lp.create_job(queued_spec(live, metadata={"run": run}))
    # The server created the job on the first try (201), then answered the retries with it (200).
    assert statuses == [201, 200, 200]
    with LayerPruneClient(live.url, KEY_A) as lp:
        jobs = list(lp.iter_jobs(metadata={"run": run}))
        assert [j.id for j in jobs] == [job.id]
        lp.cancel_job(job.id)


def test_a_lost_cancel_response_is_not_retried(live: Live) -> None:
    # POST .../cancel has no idempotency key: after a lost answer the client must not guess.
    with LayerPruneClient(live.url, KEY_A) as lp:
        job = lp.create_job(queued_spec(live))
    with lossy_proxy(live.url, lose=1) as (url, statuses):
        with LayerPruneClient(url, KEY_A, max_retries=4, backoff=0.05) as lp:
            try:
                lp.cancel_job(job.id)
            except Exception as exc:  # noqa: BLE001 - the transport error type is httpx's business
                assert "disconnected" in str(exc).lower() or "closed" in str(exc).lower(), exc
            else:
                raise AssertionError("a lost response must surface, not be retried")
    assert statuses == [200]
    with LayerPruneClient(live.url, KEY_A) as lp:
        assert lp.get_job(job.id).status == "cancelled"
