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

