"""Webhooks: Standard Webhooks signatures, SSRF guard, retries with back-off, outcome events.

Only loopback addresses are ever contacted: the receiver listens on 127.0.0.1, and every other
address below is refused by the guard before any connection is attempted.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from layerprune.queue.transitions import enqueue_delivery
from layerprune.settings import Settings
from layerprune.webhooks import (
    WebhookSender,
    WebhookTargetBlocked,
    backoff_seconds,
    build_headers,
    check_target,
    deliver_due,
    sign,
    signing_key,
    validate_webhook_url,
    verify,
)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _settings(tmp_path, **kw) -> Settings:
    base = dict(data_dir=tmp_path / "data", webhook_allowed_hosts="127.0.0.1",
                webhook_backoff_base_seconds=0.1, webhook_backoff_cap_seconds=0.3,
                webhook_max_attempts=4, webhook_timeout_seconds=3)
    base.update(kw)
    return Settings(**base)


# ------------------------------------------------------------------ signing


def test_standard_webhooks_reference_vector():
    # The test vector of the Standard Webhooks reference libraries.
    body = b'{"test": 2432232314}'
    assert sign(SECRET, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == \
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_verify_roundtrip_and_tamper():
    now = int(time.time())
    headers = build_headers(SECRET, "whd_1", now, b'{"a":1}')
    assert verify(SECRET, headers, b'{"a":1}')
    assert not verify(SECRET, headers, b'{"a":2}')
    assert not verify("whsec_" + "QUJD", headers, b'{"a":1}')
    old = build_headers(SECRET, "whd_1", now - 3600, b"{}")
    assert not verify(SECRET, old, b"{}")  # replay outside the tolerance window
    rotated = {**headers, "webhook-signature": "v1,bm90aGluZw== " + headers["webhook-signature"]}
    assert verify(SECRET, rotated, b'{"a":1}')
    assert "webhook-signature" not in build_headers(None, "whd_1", now, b"{}")


def test_non_base64_secret_is_used_as_raw_bytes():
    assert signing_key("whsec_not base64!") == b"not base64!"
    assert signing_key("plain-password") == b"plain-password"
    assert signing_key("whsec_QUJD") == b"ABC"
    headers = build_headers("my password", "whd_2", int(time.time()), b"x")
    assert verify("my password", headers, b"x")


def test_backoff_formula():
    assert [backoff_seconds(n, 10, 3600) for n in (1, 2, 3, 4)] == [10, 20, 40, 80]
    assert backoff_seconds(20, 10, 3600) == 3600


# ------------------------------------------------------------------ SSRF guard


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/hook", "http://localhost:8080/", "http://[::1]/", "http://10.1.2.3/",
    "http://192.168.0.10/", "http://172.16.5.5/", "http://169.254.169.254/latest/meta-data",
    "http://[fe80::1]/", "http://[::ffff:127.0.0.1]/", "http://100.64.0.1/", "http://0.0.0.0/",
    "http://224.0.0.1/", "http://[fc00::1]/",
])
def test_guard_refuses_internal_addresses(url):
    with pytest.raises(WebhookTargetBlocked) as info:
        check_target(url, allowed_hosts=set())
    assert info.value.code == "webhook_target_blocked" and info.value.param == "webhook.url"


@pytest.mark.parametrize("url", ["ftp://example.com/", "http://user:pw@8.8.8.8/", "http:///nohost",
                                 "http://8.8.8.8:99999/"])
def test_guard_refuses_malformed_urls(url):
    with pytest.raises(WebhookTargetBlocked):
        check_target(url, allowed_hosts=set())


def test_guard_checks_every_resolved_address_and_honours_allow_list():
    def resolve(host, port):
        return {"hooks.example": ["93.184.216.34"], "mixed.example": ["93.184.216.34", "10.0.0.7"],
                "internal.example": ["10.0.0.7"]}[host]

    target = check_target("https://hooks.example/x", set(), resolve)
    assert (target.address, target.port, target.host) == ("93.184.216.34", 443, "hooks.example")
    for host in ("mixed.example", "internal.example"):
        with pytest.raises(WebhookTargetBlocked):
            check_target(f"https://{host}/x", set(), resolve)
    assert check_target("https://INTERNAL.example/x", {"internal.example"}, resolve).address == "10.0.0.7"
    assert check_target("http://8.8.8.8/", set()).address == "8.8.8.8"  # a literal: no lookup, no traffic


def test_unresolvable_host_is_refused():
    def resolve(host, port):
        raise OSError("Name or service not known")

    with pytest.raises(WebhookTargetBlocked, match="does not resolve"):
        check_target("https://nowhere.invalid/", set(), resolve)


def test_unresolvable_host_is_retried_at_delivery(sessions, tmp_path):
    def no_dns(host, port):
        raise OSError("Temporary failure in name resolution")

    settings = _settings(tmp_path, webhook_max_attempts=2)
    job_id, delivery_id = _terminal_job(sessions, "https://hooks.flaky-dns.test/cb")
    row = _drive(sessions, settings, delivery_id, resolve=no_dns)
    assert row.status == "failed" and row.attempts == 2
    assert [e.data["outcome"] for e in _webhook_events(sessions, job_id)] == ["retry", "failed"]


def test_validate_webhook_url_uses_settings(tmp_path):
    with pytest.raises(WebhookTargetBlocked):
        validate_webhook_url("http://127.0.0.1:9/", Settings(data_dir=tmp_path))
    validate_webhook_url("http://127.0.0.1:9/", Settings(data_dir=tmp_path, webhook_allowed_hosts="127.0.0.1"))


# ------------------------------------------------------------------ deliveries


def _terminal_job(sessions, url, status="succeeded", secret=SECRET):
    from layerprune.db.models import Job

    with sessions() as s:
        hook = {"url": url, **({"secret": secret} if secret else {})}
        job = Job(tenant="tenant-a", status=status, spec={"model": "m", "webhook": hook},
                  result={"removed_layers": [5]} if status == "succeeded" else None,
                  metadata_={"pipeline": "nightly"})
        s.add(job)
        s.flush()
        row = enqueue_delivery(s, job.id, status)
        s.commit()
        return job.id, row.id if row is not None else None


def _drive(sessions, settings, delivery_id, timeout=15.0, resolve=None):
    from layerprune.db.models import WebhookDelivery

    kw = {"resolve": resolve} if resolve else {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        deliver_due(sessions, settings=settings, **kw)
        with sessions() as s:
            row = s.get(WebhookDelivery, delivery_id)
            if row.status != "pending":
                return row
        time.sleep(0.02)
    raise AssertionError("delivery still pending")


def _webhook_events(sessions, job_id):
    from layerprune.db.models import JobEvent

    with sessions() as s:
        return list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type == "webhook")
                              .order_by(JobEvent.seq)))


def test_no_webhook_or_live_state_creates_no_delivery(sessions):
    from layerprune.db.models import Job

    with sessions() as s:
        job = Job(tenant="t", status="succeeded", spec={"model": "m"})
        s.add(job)
        s.flush()
        assert enqueue_delivery(s, job.id, "succeeded") is None
        job2 = Job(tenant="t", status="running", spec={"model": "m", "webhook": {"url": "http://x/"}})
        s.add(job2)
        s.flush()
        assert enqueue_delivery(s, job2.id, "running") is None
        s.commit()


def test_retries_with_backoff_then_delivered(sessions, receiver, tmp_path):
    settings = _settings(tmp_path)
    receiver.fail_first = 2
    job_id, delivery_id = _terminal_job(sessions, receiver.url)
    row = _drive(sessions, settings, delivery_id)
    assert row.status == "delivered" and row.attempts == 3 and row.last_status_code == 204
    assert len(receiver.requests) == 3
    for req in receiver.requests:
        assert req.headers["webhook-id"] == delivery_id  # the same id on every retry
        assert verify(SECRET, req.headers, req.body)
        assert req.json["type"] == "job.succeeded"
        data = req.json["data"]
        assert data["id"] == job_id and data["status"] == "succeeded" and data["object"] == "job"
        assert data["result"] == {"removed_layers": [5]} and data["metadata"] == {"pipeline": "nightly"}
        assert data["spec"]["webhook"]["secret"] == "***"  # the secret never travels in the body
    gaps = [b.at - a.at for a, b in zip(receiver.requests, receiver.requests[1:], strict=False)]
    assert gaps[0] >= 0.1 * 0.9 and gaps[1] >= 0.2 * 0.9  # base * 2**(n-1)
    events = _webhook_events(sessions, job_id)
    assert [e.data["outcome"] for e in events] == ["retry", "retry", "delivered"]
    assert [e.level for e in events] == ["warning", "warning", "info"]
    assert events[0].data["status_code"] == 500 and events[0].data["retry_in_seconds"] == pytest.approx(0.1)
    assert "token" not in events[0].data["url"]  # query strings (tokens) stay out of events


def test_gives_up_after_max_attempts(sessions, receiver, tmp_path):
    settings = _settings(tmp_path, webhook_max_attempts=3)
    receiver.fail_first = 100
    receiver.fail_status = 429
    job_id, delivery_id = _terminal_job(sessions, receiver.url, status="failed")
    row = _drive(sessions, settings, delivery_id)
    assert row.status == "failed" and row.attempts == 3 and row.last_status_code == 429
    assert len(receiver.requests) == 3
    assert receiver.requests[0].json["type"] == "job.failed"
    events = _webhook_events(sessions, job_id)
    assert [e.data["outcome"] for e in events] == ["retry", "retry", "failed"]
    assert events[-1].level == "error"


def test_loopback_refused_at_delivery_when_not_allowed(sessions, receiver, tmp_path):
    settings = _settings(tmp_path, webhook_allowed_hosts="")
    job_id, delivery_id = _terminal_job(sessions, receiver.url, status="cancelled")
    row = _drive(sessions, settings, delivery_id)
    assert row.status == "failed" and row.attempts == 1  # refusing again cannot help: no retry
    assert receiver.requests == []
    (event,) = _webhook_events(sessions, job_id)
    assert event.data["outcome"] == "failed" and "LAYERPRUNE_WEBHOOK_ALLOWED_HOSTS" in event.message


def test_dns_rebinding_is_refused_and_connection_is_pinned(sessions, receiver, tmp_path):
    # The host looked public when the job was created; at delivery it resolves to loopback.
    def public(host, port):
        return ["93.184.216.34"]

    def rebound(host, port):
        return ["127.0.0.1"]

    url = f"http://hooks.rebind.test:{receiver.port}/cb"
    check_target(url, set(), public)  # creation-time check passes
    settings = _settings(tmp_path, webhook_allowed_hosts="")
    job_id, delivery_id = _terminal_job(sessions, url)
    row = _drive(sessions, settings, delivery_id, resolve=rebound)
    assert row.status == "failed" and receiver.requests == []
    # Allowed explicitly: the request goes to the checked address, Host keeps the name.
    settings = _settings(tmp_path, webhook_allowed_hosts="hooks.rebind.test")
    job_id, delivery_id = _terminal_job(sessions, url)
    row = _drive(sessions, settings, delivery_id, resolve=rebound)
    assert row.status == "delivered"
    assert receiver.requests[0].headers["host"] == f"hooks.rebind.test:{receiver.port}"


def test_unsigned_delivery_without_secret(sessions, receiver, tmp_path):
    job_id, delivery_id = _terminal_job(sessions, receiver.url, secret=None)
    assert _drive(sessions, _settings(tmp_path), delivery_id).status == "delivered"
    assert "webhook-signature" not in receiver.requests[0].headers


def test_sender_thread_delivers_and_claims_once(sessions, receiver, tmp_path):
    settings = _settings(tmp_path)
    job_id, delivery_id = _terminal_job(sessions, receiver.url)
    senders = [WebhookSender(sessions, interval=0.05, settings=settings).start() for _ in range(3)]
    try:
        deadline = time.monotonic() + 10
        while not receiver.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        for sender in senders:
            sender.stop()
    assert len(receiver.requests) == 1  # three concurrent senders, one delivery
    assert [e.data["outcome"] for e in _webhook_events(sessions, job_id)] == ["delivered"]


def test_terminal_transitions_create_delivery_rows(sessions):
    """The queue's finish/fail/cancel write the delivery row in their own transaction."""
    from layerprune.db.models import Job, WebhookDelivery
    from layerprune.queue.transitions import cancel_finish, claim_job, fail_job, finish_job

    ids = []
    with sessions() as s:
        for _ in range(3):
            job = Job(tenant="t", status="queued", spec={"model": "m", "webhook": {"url": "https://h.example/"}})
            s.add(job)
            s.flush()
            ids.append(job.id)
        s.commit()
    with sessions() as s:
        for job_id in ids:
            assert claim_job(s, job_id, "w1", 60) is not None
        assert finish_job(s, ids[0], "w1", {"removed_layers": []}, [])
        assert fail_job(s, ids[1], "w1", "invalid_dataset", "bad data")
        assert cancel_finish(s, ids[2], "w1")
    with sessions() as s:
        rows = {r.job_id: r for r in s.scalars(select(WebhookDelivery))}
    assert [rows[i].event_type for i in ids] == ["job.succeeded", "job.failed", "job.cancelled"]
    assert all(rows[i].status == "pending" and rows[i].attempts == 0 for i in ids)


def test_https_keeps_the_name_for_sni_and_verifies_certificates(sessions, tmp_path):
    """The pinned connection still does TLS for the URL's host: SNI carries the name and an
    untrusted certificate fails the attempt (here: a self-signed one on a loopback server)."""
    import datetime as dt
    import ssl
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hooks.tls.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("hooks.tls.test")]), critical=False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    seen_sni: list[str | None] = []
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    ctx.sni_callback = lambda sock, server_name, _ctx: seen_sni.append(server_name)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        settings = _settings(tmp_path, webhook_allowed_hosts="hooks.tls.test", webhook_max_attempts=1)
        job_id, delivery_id = _terminal_job(sessions, f"https://hooks.tls.test:{port}/cb")
        row = _drive(sessions, settings, delivery_id, resolve=lambda host, p: ["127.0.0.1"])
    finally:
        server.shutdown()
        server.server_close()
    assert row.status == "failed" and "CERTIFICATE_VERIFY_FAILED" in (row.last_error or "")
    assert seen_sni == ["hooks.tls.test"]
