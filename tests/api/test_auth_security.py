"""Issue 11's security items over real HTTP on the embedded default (SQLite, local storage):
failed-key limiting, the key secret, public links, Allow/OPTIONS, the OpenAPI document."""

from __future__ import annotations

import stat

import pytest

from layerprune.api.auth_limit import FailedAuthLimiter, client_address
from tests.api.helpers import PRUNE, publish
from tests.service_fixtures import service_env

KEY = "solo-key-" + "3" * 24


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """An app on the embedded default with a small failed-key limit; ``connect(addr)`` gives a
    client whose TCP peer is ``addr`` (clients share the app, hence the limiter)."""
    from fastapi.testclient import TestClient

    from layerprune.api.app import create_app
    from layerprune.db.session import dispose_engines
    from layerprune.settings import get_settings

    data = tmp_path_factory.mktemp("lp-auth")
    with service_env(data_dir=data, database_url=None, broker_url=None, storage_dir=None, api_keys=f"solo:{KEY}",
                     auto_migrate="1", cuda_workers="false", auth_fail_limit="5", auth_fail_window_seconds="30",
                     trusted_proxies="10.9.0.0/16", public_url=None):
        settings = get_settings()
        app = create_app(settings, start_background=False)
        clients: list[TestClient] = []

        def connect(addr: str) -> TestClient:
            c = TestClient(app, client=(addr, 40000))
            c.__enter__()
            clients.append(c)
            return c

        yield app, settings, connect
        for c in clients:
            c.__exit__(None, None, None)
    dispose_engines()


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# ------------------------------------------------------------------ failed-key limiting


def test_limiter_window_slides_and_memory_is_bounded():
    now = [1000.0]
    lim = FailedAuthLimiter(limit=3, window_s=10, max_clients=2, clock=lambda: now[0])
    for step in (0, 2):  # failures at t=1000 and t=1002
        now[0] += step
        lim.record_failure("a")
    assert lim.retry_after("a") is None  # under the limit
    now[0] += 2
    lim.record_failure("a")  # t=1004: the third within 10 s
    assert lim.retry_after("a") == pytest.approx(6)  # the first failure leaves the window at t=1010
    now[0] += 6
    assert lim.retry_after("a") is None  # one slot free again...
    lim.record_failure("a")
    assert lim.retry_after("a") == pytest.approx(2)  # ...and used: the t=1002 failure is the next to go
    lim.record_failure("b")
    lim.record_failure("c")  # a third client: the least recently failing ("a") is forgotten
    assert len(lim) == 2 and lim.retry_after("a") is None
    now[0] += 100
    assert lim.retry_after("b") is None and len(lim) == 1  # expired entries are dropped when read


def test_client_address_believes_only_trusted_proxies():
    import ipaddress

    proxies = [ipaddress.ip_network("10.9.0.0/16")]
    assert client_address("203.0.113.7", ["1.2.3.4"], proxies) == "203.0.113.7"  # untrusted peer: header ignored
    assert client_address("10.9.0.2", ["1.2.3.4"], proxies) == "1.2.3.4"
    # Read from the right: what the client wrote itself (the left part) is never believed.
    assert client_address("10.9.0.2", ["6.6.6.6, 198.51.100.9, 10.9.0.1"], proxies) == "198.51.100.9"
    assert client_address("10.9.0.2", [], proxies) == "10.9.0.2"


def test_repeated_wrong_keys_get_429_and_others_are_not_slowed(embedded):
    _, _, connect = embedded
    attacker, bystander = connect("198.51.100.20"), connect("198.51.100.21")
    for i in range(5):
        r = attacker.get("/v1/jobs", headers=_auth(f"wrong-{i}"))
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = attacker.get("/v1/jobs", headers=_auth("wrong-5"))
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "too_many_requests" and r.json()["error"]["param"] is None
    assert 1 <= int(r.headers["retry-after"]) <= 30
    # Refused before the key is looked at, right or wrong: otherwise guessing would go on.
    assert attacker.get("/v1/jobs", headers=_auth(KEY)).status_code == 429
    # A request without a key tests nothing: the usual 401.
    assert attacker.get("/v1/jobs").status_code == 401
    # Another address with the right key is not affected.
    assert {bystander.get("/v1/jobs", headers=_auth(KEY)).status_code for _ in range(20)} == {200}


def test_right_keys_never_count_toward_the_limit(embedded):
    _, _, connect = embedded
    c = connect("198.51.100.30")
    for _ in range(30):
        assert c.get("/v1/jobs", headers=_auth(KEY)).status_code == 200
    for i in range(4):  # four wrong keys stay under the limit of five, after thirty right ones
        assert c.get("/v1/jobs", headers=_auth(f"bad-{i}")).status_code == 401
    assert c.get("/v1/jobs", headers=_auth(KEY)).status_code == 200


def test_forwarded_for_counts_only_behind_a_trusted_proxy(embedded):
    _, _, connect = embedded
    proxy, direct = connect("10.9.0.5"), connect("198.51.100.40")
    for i in range(5):
        assert proxy.get("/v1/jobs", headers={**_auth(f"x{i}"), "X-Forwarded-For": "192.0.2.50"}).status_code == 401
    assert proxy.get("/v1/jobs", headers={**_auth(KEY), "X-Forwarded-For": "192.0.2.50"}).status_code == 429
    # The proxy's other clients are not blocked with it.
    assert proxy.get("/v1/jobs", headers={**_auth(KEY), "X-Forwarded-For": "192.0.2.51"}).status_code == 200
    # A direct client cannot shift the blame (or escape its block) with the header.
    for i in range(5):
        direct.get("/v1/jobs", headers={**_auth(f"y{i}"), "X-Forwarded-For": f"192.0.2.{60 + i}"})
    assert direct.get("/v1/jobs", headers={**_auth(KEY), "X-Forwarded-For": "192.0.2.99"}).status_code == 429


# ------------------------------------------------------------------ the key secret


def test_development_secret_is_generated_once_and_private(embedded):
    from layerprune.db.keys import SECRET_FILE, key_secret

    _, settings, _ = embedded
    with service_env(key_secret=None, data_dir=settings.data_dir / "dev", database_url=None):
        from layerprune.settings import get_settings

        dev = get_settings()
        secret = key_secret(dev)
        path = dev.data_dir / SECRET_FILE
        assert path.read_bytes() == secret and len(secret) == 64
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert key_secret(dev) == secret


def test_server_database_without_secret_refuses_to_start(tmp_path):
    from layerprune.api.app import create_app
    from layerprune.db.keys import KeySecretError
    from layerprune.settings import Settings

    pg = "postgresql+psycopg://nobody@127.0.0.1:1/none"  # never connected to: the check comes first
    with pytest.raises(KeySecretError, match="LAYERPRUNE_KEY_SECRET is not set"):
        create_app(Settings(data_dir=tmp_path, database_url=pg, key_secret=None), start_background=False)
    with pytest.raises(KeySecretError, match="at least 32"):
        create_app(Settings(data_dir=tmp_path, database_url=pg, key_secret="short"), start_background=False)


def test_stored_hash_depends_on_the_secret(embedded):
    """A database copy alone does not confirm a guess: the stored value is not sha256(key)."""
    import hashlib

    from sqlalchemy import select

    from layerprune.db.keys import SCHEME_HMAC
    from layerprune.db.models import ApiKey
    from layerprune.db.session import session_scope

    _, settings, _ = embedded
    with session_scope(settings.effective_database_url) as s:
        rows = list(s.scalars(select(ApiKey).where(ApiKey.tenant == "solo")))
    assert len(rows) == 1 and rows[0].hash_scheme == SCHEME_HMAC
    assert rows[0].key_hash != hashlib.sha256(KEY.encode()).hexdigest()


# ------------------------------------------------------------------ links, Allow, OpenAPI


def test_artifact_links_ignore_the_host_header(embedded, tmp_path):
    from fastapi.testclient import TestClient

    from layerprune.api.app import create_app

    app, settings, connect = embedded
    c = connect("198.51.100.50")
    job_id = c.post("/v1/jobs", json=PRUNE, headers=_auth(KEY)).json()["id"]
    publish(settings.effective_database_url, settings, "solo", job_id, {"config.json": b"{}"}, tmp_path)
    r = c.get(f"/v1/jobs/{job_id}/artifacts", headers={**_auth(KEY), "Host": "evil.example"})
    [art] = r.json()
    assert art["url"] == f"/v1/jobs/{job_id}/artifacts/config.json"  # root-relative: no host at all
    assert c.get(art["url"], headers=_auth(KEY)).content == b"{}"
    public = settings.model_copy(update={"public_url": "https://lp.example.com/api"})
    with TestClient(create_app(public, start_background=False), client=("198.51.100.51", 1)) as p:
        [art] = p.get(f"/v1/jobs/{job_id}/artifacts", headers={**_auth(KEY), "Host": "evil.example"}).json()
    assert art["url"] == f"https://lp.example.com/api/v1/jobs/{job_id}/artifacts/config.json"


def test_public_url_is_validated():
    from pydantic import ValidationError

    from layerprune.settings import Settings

    assert Settings(public_url="https://lp.example.com/").public_url == "https://lp.example.com"
    for bad in ("lp.example.com", "ftp://x", "https://x/?a=1"):
        with pytest.raises(ValidationError, match="PUBLIC_URL"):
            Settings(public_url=bad)


@pytest.mark.parametrize(("path", "allow"), [
    ("/v1/jobs", "GET, POST, OPTIONS"),
    ("/v1/jobs/job_x", "GET, DELETE, OPTIONS"),
    ("/v1/files/file_x", "GET, DELETE, OPTIONS"),
    ("/v1/jobs/job_x/cancel", "POST, OPTIONS"),
    ("/healthz", "GET, OPTIONS"),
])
def test_allow_lists_every_method_of_the_path(embedded, path, allow):
    _, _, connect = embedded
    c = connect("198.51.100.60")
    r = c.options(path)
    assert r.status_code == 204 and r.headers["allow"] == allow and r.content == b""
    r = c.request("PATCH", path, headers=_auth(KEY))
    assert r.status_code == 405 and r.headers["allow"] == allow
    assert r.json()["error"]["code"] == "method_not_allowed"


def test_openapi_documents_what_the_layers_answer(embedded):
    _, _, connect = embedded
    c = connect("198.51.100.70")
    doc = c.get("/openapi.json").json()
    assert "HTTPValidationError" not in str(doc)
    create = doc["paths"]["/v1/jobs"]["post"]["responses"]
    assert {"400", "401", "413", "422", "429"} <= set(create)
    assert create["429"]["headers"]["Retry-After"]["required"] is True
    assert create["201"]["links"]["get_job_route_v1_jobs__job_id__get"]["parameters"] == {"job_id": "$response.body#/id"}
    assert "429" not in doc["paths"]["/healthz"]["get"]["responses"]  # no key, no key limit
    # The 400 it documents is real: a body that is not even text.
    r = c.post("/v1/jobs", content=b"AJJ\xff\x01\xfe\x1a", headers={**_auth(KEY), "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"] == {
        "code": "bad_request", "message": "the body is not UTF-8 text (bad byte at offset 3); send UTF-8 JSON",
        "param": None}


def test_server_commands_refuse_a_missing_secret_before_touching_the_database(tmp_path, capsys):
    from layerprune.cli import main

    # A server database that does not exist: had the command connected first, the error would differ.
    with service_env(key_secret=None, data_dir=tmp_path, database_url="postgresql+psycopg://nobody@127.0.0.1:1/none"):
        assert main(["keys", "create", "t1"]) == 1
        assert main(["serve", "--port", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("error: LAYERPRUNE_KEY_SECRET is not set") == 2 and "Traceback" not in err
