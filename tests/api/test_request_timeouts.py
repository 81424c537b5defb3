"""Requests whose headers or body stop arriving are answered 408 and their connection closed.

Raw sockets against a live server (``layerprune serve``) with one-second timeouts, set through the
``LAYERPRUNE_REQUEST_HEADER_TIMEOUT_SECONDS`` and ``LAYERPRUNE_REQUEST_BODY_TIMEOUT_SECONDS`` settings.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.api.live_server import live_server

TIMEOUT = 1.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with live_server(tmp_path_factory.mktemp("timeouts"), request_header_timeout_seconds=str(TIMEOUT),
                     request_body_timeout_seconds=str(TIMEOUT)) as s:
        yield s


def _connect(server) -> socket.socket:  # noqa: ANN001
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=15)
    return sock


def _read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    started = time.monotonic()
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data, time.monotonic() - started
        data += chunk


def _assert_408(data: bytes) -> dict:
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), data[:200]
    assert b"connection: close" in head.lower()
    error = json.loads(body)["error"]
    assert error["code"] == "request_timeout" and error["message"], error
    return error


def test_headers_that_never_finish(server):
    with _connect(server) as sock:
        sock.sendall(b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ")
        data, waited = _read_until_closed(sock)
    assert "headers" in _assert_408(data)["message"]
    assert TIMEOUT * 0.8 <= waited < TIMEOUT + 5


def test_headers_trickled_byte_by_byte_are_cut_off(server):
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    with _connect(server) as sock:
        started = time.monotonic()
        sock.settimeout(0.2)
        data = b""
        for byte in request:  # one byte every 0.1 s: never idle, never done
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            try:
                data += sock.recv(65536)
                break
            except TimeoutError:
                pass
            time.sleep(0.1)
        sock.settimeout(15)
        rest, _ = _read_until_closed(sock)
        data += rest
    _assert_408(data)
    assert time.monotonic() - started < TIMEOUT + 5


def test_a_connection_that_sends_nothing_is_closed(server):
    with _connect(server) as sock:
        data, waited = _read_until_closed(sock)
    _assert_408(data)
    assert waited < TIMEOUT + 5


def test_the_next_request_on_a_kept_alive_connection_has_the_same_deadline(server):
    with _connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while not first.endswith(b"}"):  # the whole first answer (its JSON body ends the response)
            first += sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # the blank line never comes
        data, _ = _read_until_closed(sock)
    _assert_408(data)


def test_a_declared_body_that_never_arrives(server):
    head = (f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.key}\r\n"
            "Content-Type: application/json\r\nContent-Length: 400\r\n\r\n").encode()
    with _connect(server) as sock:
        sock.sendall(head + b'{"model": "bundled:')  # part of it, then nothing
        data, waited = _read_until_closed(sock)
    assert "body" in _assert_408(data)["message"]
    assert TIMEOUT * 0.8 <= waited < TIMEOUT + 5


def test_an_upload_that_stalls(server):
    boundary = "b0undary"
    head = (f"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.key}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: 100000\r\n\r\n").encode()
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nevaluate\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n"
            "Content-Type: text/plain\r\n\r\nsome text\n").encode()
    with _connect(server) as sock:
        sock.sendall(head + part)
        data, waited = _read_until_closed(sock)
    _assert_408(data)
    assert waited < TIMEOUT + 5


def test_a_slow_but_steady_body_is_not_cut_off(server):
    """The body timeout is the longest wait for the next piece, not a deadline for the whole body."""
    body = json.dumps({"model": "bundled:smollm2-135m-instruct",
                       "prune": {"metric": "reverse_order", "ratio": 0.25}}).encode()
    head = (f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    with _connect(server) as sock:
        sock.sendall(head)
        for i in range(0, len(body), len(body) // 4 + 1):  # 4 pieces over ~2 s: > TIMEOUT in all
            time.sleep(TIMEOUT / 2)
            sock.sendall(body[i:i + len(body) // 4 + 1])
        data, _ = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 201"), data[:300]


def test_a_live_event_stream_outlasts_both_timeouts(server):
    job = server.create_job()
    with _connect(server) as sock:
        sock.sendall(f"GET /v1/jobs/{job['id']}/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.key}"
                     "\r\nAccept: text/event-stream\r\n\r\n".encode())
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first[:200]
        sock.settimeout(0.2)
        deadline = time.monotonic() + 3 * TIMEOUT
        while time.monotonic() < deadline:
            try:
                assert sock.recv(65536) != b"", "the stream was closed"
            except TimeoutError:
                pass  # quiet (the job waits in its queue): still open


def test_the_settings_exist_with_defaults(tmp_path):
    from layerprune.settings import Settings

    s = Settings(data_dir=tmp_path)
    assert s.request_header_timeout_seconds == 10 and s.request_body_timeout_seconds == 30
