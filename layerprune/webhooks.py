"""Webhook deliveries of terminal job states: Standard Webhooks signing, an SSRF guard, retries.

Flow (one owner per step):
1. Every terminal transition of ``layerprune.queue.transitions`` (finish, fail, cancel, the
   reaper's moves, the API's cancel of a queued job) adds the ``webhook_deliveries`` row
   (``enqueue_delivery``) *in the same transaction*: the row exists exactly when the terminal
   state does.
2. ``WebhookSender`` (a daemon thread in the API and in each worker process, never inside a job)
   or ``deliver_due(...)`` claims due rows atomically and POSTs them; a double claim is impossible
   because the claim is one guarded UPDATE.
3. Every attempt's outcome is a job event of type ``webhook`` written with the row's new state.

Signing follows https://www.standardwebhooks.com: headers ``webhook-id`` (the delivery id, the
same on every retry), ``webhook-timestamp`` (unix seconds of this attempt) and
``webhook-signature: v1,<base64 HMAC-SHA256(key, f"{id}.{timestamp}.{body}")>``. The key is the
secret with its ``whsec_`` prefix stripped, base64-decoded. A secret that is not valid base64
(users type passwords) is used as its UTF-8 bytes as-is, prefix stripped; ``verify`` applies the
same rule, so both ends agree. A job without a secret is delivered unsigned (no signature header).

Body: the Standard Webhooks envelope ``{"type": "job.succeeded"|"job.failed"|"job.cancelled",
"timestamp": <RFC 3339>, "data": <the job object as GET /v1/jobs/{id} answers it>}``
(``layerprune.queue.job_object``).

Retry policy: attempt n (1-based) that fails with a network error, a timeout, a 429 or any status
outside 2xx is retried after ``min(cap, base * 2 ** (n - 1))`` seconds (settings
``webhook_backoff_base_seconds`` = 10, ``webhook_backoff_cap_seconds`` = 3600), until
``webhook_max_attempts`` (8) attempts were made; then the delivery is ``failed``. A host that does
not resolve is retried the same way; a target the SSRF guard refuses fails at once (retrying
cannot help). Redirects are not followed.

SSRF guard: a target host is resolved and every address must be global: loopback, private,
link-local, shared (CGNAT), multicast, unspecified and reserved addresses are refused unless the
host (as written in the URL, case-insensitive) is in ``LAYERPRUNE_WEBHOOK_ALLOWED_HOSTS``. The
check runs when the job is created and again at each attempt, and the connection goes to the
address that was checked (the URL's host is kept for ``Host`` and TLS SNI), so a DNS answer that
changes between check and connect (rebinding) cannot redirect the request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from sqlalchemy import select, update

from layerprune.core.errors import LayerPruneError
from layerprune.db.events import add_event
from layerprune.db.models import Job, Study
from layerprune.db.models import WebhookDelivery as D
from layerprune.metrics import WEBHOOK_DELIVERIES
from layerprune.queue.job_object import job_object
from layerprune.queue.study_object import study_public
from layerprune.settings import Settings, get_settings

log = logging.getLogger("layerprune.webhooks")

# A claimed delivery is invisible to other senders for this long; a sender that dies mid-attempt
# leaves the row to be retried after it (the attempt counter already counts the lost try).
CLAIM_SECONDS = 120.0

Resolver = Callable[[str, int], list[str]]


class WebhookTargetBlocked(LayerPruneError):  # noqa: N818 - named like the other typed errors
    """The webhook URL points at an address the SSRF guard refuses."""

    code = "webhook_target_blocked"


class WebhookHostUnresolved(WebhookTargetBlocked):
    """The webhook host does not resolve (now): refused at creation, retried at delivery."""

    code = "webhook_host_unresolved"


# ---------------------------------------------------------------- signing


def signing_key(secret: str) -> bytes:
    """The HMAC key of a secret: ``whsec_`` stripped, base64-decoded; raw UTF-8 when not base64."""
    raw = secret[len("whsec_") :] if secret.startswith("whsec_") else secret
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return raw.encode("utf-8")


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 signature>`` of one message."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(signing_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def build_headers(secret: str | None, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    headers = {
        "content-type": "application/json",
        "user-agent": "layerprune-webhooks/1",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
    }
    if secret:
        headers["webhook-signature"] = sign(secret, msg_id, timestamp, body)
    return headers


def verify(secret: str, headers: dict[str, str], body: bytes, *, tolerance_s: int = 300,
           now: float | None = None) -> bool:
    """Receiver side: whether ``body`` with ``headers`` was signed with ``secret`` recently.

    ``webhook-signature`` may hold several space-separated signatures (key rotation); one match is
    enough. Header names are matched case-insensitively.
    """
    low = {k.lower(): v for k, v in headers.items()}
    msg_id, ts, sigs = low.get("webhook-id"), low.get("webhook-timestamp"), low.get("webhook-signature")
    if not msg_id or not ts or not sigs:
        return False
    try:
        stamp = int(ts)
    except ValueError:
        return False
    if abs((now if now is not None else time.time()) - stamp) > tolerance_s:
        return False
    expected = sign(secret, msg_id, stamp, body)
    return any(hmac.compare_digest(expected, s) for s in sigs.split(" ") if s)


# ---------------------------------------------------------------- SSRF guard


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _is_public(addr: str) -> bool:
    ip = ipaddress.ip_address(addr.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback
    # is_global is False for loopback, private, link-local, shared 100.64/10, reserved, unspecified…
    return ip.is_global and not ip.is_multicast


@dataclass(frozen=True)
class Target:
    """A checked webhook target: the URL and the address the request must go to."""

    url: str
    host: str
    port: int
    address: str


def check_target(url: str, allowed_hosts: Iterable[str], resolve: Resolver = system_resolver) -> Target:
    """Resolve ``url``'s host and refuse it unless every address is public or the host is allowed.

    Raises WebhookTargetBlocked (param ``webhook.url``) for a refused or malformed target and for
    a host that does not resolve.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookTargetBlocked("webhook url must be an absolute http:// or https:// URL",
                                   param="webhook.url")
    if parts.username or parts.password:
        raise WebhookTargetBlocked("webhook url must not carry credentials", param="webhook.url")
    host = parts.hostname.lower()
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise WebhookTargetBlocked(f"webhook url has a bad port: {exc}", param="webhook.url") from exc
    try:
        addresses = resolve(host, port)
    except (OSError, UnicodeError) as exc:
        raise WebhookHostUnresolved(f"webhook host {host!r} does not resolve: {exc}",
                                    param="webhook.url") from exc
    if not addresses:
        raise WebhookHostUnresolved(f"webhook host {host!r} does not resolve", param="webhook.url")
    allowed = {h.strip().lower() for h in allowed_hosts}
    if host not in allowed:
        for addr in addresses:
            if not _is_public(addr):
                raise WebhookTargetBlocked(
                    f"webhook host {host!r} resolves to {addr}, a loopback/private/link-local/reserved "
                    "address; list the host in LAYERPRUNE_WEBHOOK_ALLOWED_HOSTS to allow it",
                    param="webhook.url")
    return Target(url=url, host=host, port=port, address=addresses[0])


def validate_webhook_url(url: str, settings: Settings | None = None,
                         resolve: Resolver = system_resolver) -> None:
    """Creation-time check for the API: raises WebhookTargetBlocked (→ 422, param webhook.url)."""
    settings = settings or get_settings()
    check_target(url, settings.webhook_allowed_host_set, resolve)


# ---------------------------------------------------------------- one HTTP attempt


@dataclass(frozen=True)
class AttemptResult:
    ok: bool
    status_code: int | None
    error: str | None
    retryable: bool


def post_pinned(target: Target, headers: dict[str, str], body: bytes, timeout_s: float) -> AttemptResult:
    """POST ``body`` to the checked address of ``target`` (Host header and SNI keep the name)."""
    parts = urlsplit(target.url)
    ip = target.address.split("%", 1)[0]
    netloc_ip = f"[{ip}]" if ":" in ip else ip
    pinned = urlunsplit((parts.scheme, f"{netloc_ip}:{target.port}", parts.path or "/", parts.query, ""))
    default_port = 443 if parts.scheme == "https" else 80
    host_header = target.host if target.port == default_port else f"{target.host}:{target.port}"
    extensions = {"sni_hostname": target.host} if parts.scheme == "https" else {}
    try:
        with httpx.Client(timeout=timeout_s, follow_redirects=False, trust_env=False) as client:
            request = client.build_request("POST", pinned, content=body,
                                           headers={**headers, "host": host_header}, extensions=extensions)
            response = client.send(request)
    except httpx.HTTPError as exc:
        return AttemptResult(False, None, f"{type(exc).__name__}: {exc}"[:500], True)
    if 200 <= response.status_code < 300:
        return AttemptResult(True, response.status_code, None, False)
    return AttemptResult(False, response.status_code, f"HTTP {response.status_code}", True)


def backoff_seconds(attempt: int, base: float, cap: float) -> float:
    """Delay before the retry that follows failed attempt ``attempt`` (1-based)."""
    return min(cap, base * (2 ** (attempt - 1)))


# ---------------------------------------------------------------- database side


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite hands back naive datetimes; they are UTC
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _claim(session_factory: Callable[[], Any], delivery_id: str, now: datetime) -> bool:
    """Take one due delivery: bump attempts and hide it for CLAIM_SECONDS, in one guarded UPDATE."""
    with session_factory() as session:
        result = session.execute(
            update(D)
            .where(D.id == delivery_id, D.status == "pending", D.next_attempt_at <= now)
            .values(attempts=D.attempts + 1, next_attempt_at=now + timedelta(seconds=CLAIM_SECONDS))
        )
        session.commit()
        return result.rowcount == 1


def deliver_one(session_factory: Callable[[], Any], delivery_id: str, *, settings: Settings | None = None,
                resolve: Resolver = system_resolver) -> str | None:
    """Make one attempt of a due delivery. Returns delivered|retry|failed, or None if not claimed."""
    settings = settings or get_settings()
    if not _claim(session_factory, delivery_id, _now()):
        return None
    with session_factory() as session:
        row = session.get(D, delivery_id)
        job = session.get(Job, row.job_id) if row is not None else None
        if row is None:
            return None
        if job is None:  # the job row is gone (deleted with its deliveries) since the claim
            row.status, row.last_error = "failed", "job deleted"
            session.commit()
            return "failed"
        hook = (job.spec or {}).get("webhook") or {}
        data = job_object(job)
        if row.study_id is not None:  # a study's delivery: the study object, signed with its secret
            study = session.get(Study, row.study_id)
            if study is None:
                row.status, row.last_error = "failed", "study deleted"
                session.commit()
                return "failed"
            hook = (study.spec or {}).get("webhook") or {}
            data = study_public(session, study)
        body = json.dumps({"type": row.event_type, "timestamp": _iso(_now()), "data": data},
                          separators=(",", ":"), sort_keys=True).encode()
        attempt = row.attempts
    try:
        target = check_target(row.url, settings.webhook_allowed_host_set, resolve)
    except WebhookTargetBlocked as exc:
        # A refused address stays refused; a name that does not resolve may resolve later (DNS hiccup).
        result = AttemptResult(False, None, exc.message, retryable=isinstance(exc, WebhookHostUnresolved))
    else:
        headers = build_headers(hook.get("secret"), delivery_id, int(time.time()), body)
        result = post_pinned(target, headers, body, settings.webhook_timeout_seconds)
    return _record(session_factory, delivery_id, attempt, result, settings)


def _record(session_factory: Callable[[], Any], delivery_id: str, attempt: int, result: AttemptResult,
            settings: Settings) -> str:
    """Store an attempt's outcome on the row and as a ``webhook`` job event, in one transaction."""
    now = _now()
    with session_factory() as session:
        row = session.get(D, delivery_id)
        if row is None:  # the job (and its deliveries) was deleted during the attempt
            return "failed"
        row.last_status_code, row.last_error = result.status_code, result.error
        data: dict[str, Any] = {"delivery_id": delivery_id, "url": _redact(row.url), "event_type": row.event_type,
                                "attempt": attempt, "status_code": result.status_code, "error": result.error}
        if result.ok:
            row.status, row.delivered_at, row.next_attempt_at = "delivered", now, None
            outcome, level = "delivered", "info"
            message = f"webhook {row.event_type} delivered (HTTP {result.status_code}, attempt {attempt})"
        elif result.retryable and attempt < settings.webhook_max_attempts:
            delay = backoff_seconds(attempt, settings.webhook_backoff_base_seconds,
                                    settings.webhook_backoff_cap_seconds)
            row.next_attempt_at = now + timedelta(seconds=delay)
            outcome, level = "retry", "warning"
            data["next_attempt_at"] = _iso(row.next_attempt_at)
            data["retry_in_seconds"] = delay
            message = f"webhook attempt {attempt} failed ({result.error}); retrying in {delay:g}s"
        else:
            row.status, row.next_attempt_at = "failed", None
            outcome, level = "failed", "error"
            message = f"webhook {row.event_type} failed after {attempt} attempt(s): {result.error}"
        data["outcome"] = outcome
        add_event(session, row.job_id, "webhook", message, level=level, data=data)
        session.commit()
        job_id = row.job_id
    WEBHOOK_DELIVERIES.labels(outcome=outcome).inc()
    log.log(logging.WARNING if outcome == "failed" else logging.INFO, "webhook %s", outcome,
            extra={"job_id": job_id, "delivery_id": delivery_id, "attempt": attempt,
                   "status_code": result.status_code})
    return outcome


def _redact(url: str) -> str:
    """The URL without its query string (tokens often live there) for events and logs."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def due_delivery_ids(session_factory: Callable[[], Any], limit: int = 50) -> list[str]:
    with session_factory() as session:
        rows = session.execute(
            select(D.id).where(D.status == "pending", D.next_attempt_at <= _now())
            .order_by(D.next_attempt_at).limit(limit)
        ).scalars()
        return list(rows)


def deliver_due(session_factory: Callable[[], Any], *, limit: int = 50, settings: Settings | None = None,
                resolve: Resolver = system_resolver) -> int:
    """One sweep: attempt every due delivery (sequentially). Returns how many attempts were made."""
    made = 0
    for delivery_id in due_delivery_ids(session_factory, limit):
        try:
            if deliver_one(session_factory, delivery_id, settings=settings, resolve=resolve) is not None:
                made += 1
        except Exception:  # one broken row must not stop the others
            log.exception("webhook delivery %s crashed", delivery_id)
    return made


class WebhookSender:
    """A daemon thread that sweeps due deliveries every ``interval`` seconds."""

    def __init__(self, session_factory: Callable[[], Any], *, interval: float | None = None,
                 settings: Settings | None = None) -> None:
        self.session_factory = session_factory
        self.settings = settings or get_settings()
        self.interval = interval if interval is not None else self.settings.webhook_interval_seconds
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhook-sender", daemon=True)

    def start(self) -> WebhookSender:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                deliver_due(self.session_factory, settings=self.settings)
            except Exception:  # a DB hiccup must not kill the thread
                log.exception("webhook sweep failed")
            self._wake.wait(self.interval)
            self._wake.clear()
