"""The in-process memory of verified API keys (api/key_cache.py)."""

from __future__ import annotations

import time

from layerprune.api.key_cache import KeyCache
from tests.service_fixtures import *  # noqa: F403


def test_remembers_a_key_for_its_ttl_only():
    cache = KeyCache(0.3)
    assert cache.get("k1") is None
    cache.put("k1", "tenant-a")
    assert cache.get("k1") == "tenant-a"
    assert cache.get("k2") is None
    time.sleep(0.35)
    assert cache.get("k1") is None


def test_zero_ttl_remembers_nothing():
    cache = KeyCache(0)
    cache.put("k1", "tenant-a")
    assert cache.get("k1") is None


def test_the_plain_key_is_not_kept():
    cache = KeyCache(60)
    cache.put("lp_secret_key_value", "tenant-a")
    assert all(b"lp_secret_key_value" not in digest for digest in cache._entries)
    assert all("lp_secret_key_value" not in repr(entry) for entry in cache._entries.values())


def test_bounded():
    from layerprune.api import key_cache

    cache = KeyCache(60)
    for i in range(key_cache.MAX_ENTRIES + 10):
        cache.put(f"k{i}", "t")
    assert len(cache._entries) <= key_cache.MAX_ENTRIES
    cache.clear()
    assert cache.get("k5") is None


def test_a_verified_key_costs_no_database_lookup(client, new_tenant, monkeypatch):
    from layerprune.api import deps

    _tenant, h = new_tenant
    calls = []
    real = deps.tenant_for_key
    monkeypatch.setattr(deps, "tenant_for_key", lambda s, k: calls.append(k) or real(s, k))
    for _ in range(5):
        assert client.get("/v1/jobs", headers=h).status_code == 200
    assert len(calls) == 1
    # an unknown key is looked up every time (and refused)
    for _ in range(2):
        assert client.get("/v1/jobs", headers={"Authorization": "Bearer nope-" + "x" * 20}).status_code == 401
    assert len(calls) == 3



def test_a_key_in_use_is_handed_out_for_refresh_once_before_it_expires():
    from layerprune.api import key_cache

    cache = KeyCache(0.5)
    cache.put("k1", "tenant-a")
    assert cache.lookup("k1") == ("tenant-a", False)  # young: no refresh
    time.sleep(0.5 * (1 - key_cache.REFRESH_FRACTION) + 0.02)
    assert cache.lookup("k1") == ("tenant-a", True)  # the first request near expiry refreshes it
    assert cache.lookup("k1") == ("tenant-a", False)  # ... and only that one
    cache.put("k1", "tenant-a")  # verified again: a full TTL from now
    time.sleep(0.2)
    assert cache.lookup("k1") == ("tenant-a", False)
    cache.forget("k1")  # revoked (the refresh found no tenant)
    assert cache.lookup("k1") == (None, False)


def test_a_polled_key_is_verified_again_before_it_expires(service_settings, migrated_db, new_tenant, monkeypatch):
    """Under steady polling no request finds its key expired (which, with many pollers, made them all
    look it up at the same instant); the checks happen in the background, about once per TTL."""
    from fastapi.testclient import TestClient

    from layerprune.api import deps
    from layerprune.api.app import create_app

    _tenant, h = new_tenant
    misses, lookups = [], []
    real_lookup, real_find = KeyCache.lookup, deps.tenant_for_key

    def lookup(self: KeyCache, key: str) -> tuple[str | None, bool]:
        found = real_lookup(self, key)
        misses.append(found[0] is None)
        return found

    monkeypatch.setattr(KeyCache, "lookup", lookup)
    monkeypatch.setattr(deps, "tenant_for_key", lambda s, k: lookups.append(k) or real_find(s, k))
    app = create_app(service_settings.model_copy(update={"api_key_cache_seconds": 1.0}), start_background=False)
    with TestClient(app) as client:
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline:
            assert client.get("/v1/jobs", headers=h).status_code == 200
            time.sleep(0.02)
    assert misses[0] and not any(misses[1:]), f"{sum(misses)} misses in {len(misses)} requests"
    assert 3 <= len(lookups) <= 6, len(lookups)  # the first, then one refresh per ~0.8 s
