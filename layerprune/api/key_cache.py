"""A short in-process memory of verified API keys, so a poller's requests cost no key lookup.

Only keys the database accepted are remembered, for ``LAYERPRUNE_API_KEY_CACHE_SECONDS`` (default
5): a revoked key keeps working in a process that verified it for at most that long, and a new key
works at once (unknown keys are always looked up). The cache is keyed by a keyed BLAKE2b digest of
the key with a secret drawn per process, so the plain key is never kept and the entries are
useless outside this process; it does not depend on how ``db.keys`` stores key hashes.

A key in use is verified again before it expires (:meth:`KeyCache.lookup` hands the first request
in an entry's last ``REFRESH_FRACTION`` of its life the job of refreshing it, in the background):
otherwise every poller of a key would miss at the same instant each TTL and look it up at once,
a stampede that was most of the API's p99 latency under 200 pollers (issue 11). A key is still
never trusted longer than the TTL after its last successful check.
"""

from __future__ import annotations

import hashlib
import secrets
import time

MAX_ENTRIES = 10_000
REFRESH_FRACTION = 0.2  # of the TTL: the window before expiry in which a key in use is checked again


class KeyCache:
    """key → tenant for ``ttl`` seconds. Used from the event loop only (no lock needed)."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._secret = secrets.token_bytes(32)
        self._entries: dict[bytes, tuple[str, float]] = {}
        self._refreshing: set[bytes] = set()

    def _digest(self, key: str) -> bytes:
        return hashlib.blake2b(key.encode("utf-8"), key=self._secret, digest_size=32).digest()

    def get(self, key: str) -> str | None:
        return self.lookup(key)[0]

    def lookup(self, key: str) -> tuple[str | None, bool]:
        """(the tenant or None, whether the caller should verify the key again now).

        True is answered once per entry, in its last ``REFRESH_FRACTION`` of the TTL; the caller
        then :meth:`put`s the fresh answer, or :meth:`forget`s the key (also when the check failed).
        """
        if self.ttl <= 0:
            return None, False
        digest = self._digest(key)
        entry = self._entries.get(digest)
        if entry is None:
            return None, False
        tenant, expires = entry
        now = time.monotonic()
        if now >= expires:
            del self._entries[digest]
            return None, False
        if now < expires - self.ttl * REFRESH_FRACTION or digest in self._refreshing:
            return tenant, False
        self._refreshing.add(digest)
        return tenant, True

    def put(self, key: str, tenant: str) -> None:
        if self.ttl <= 0:
            return
        now = time.monotonic()
        if len(self._entries) >= MAX_ENTRIES:
            self._entries = {d: e for d, e in self._entries.items() if e[1] > now}
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()  # a flood of distinct valid keys: start over rather than grow
                self._refreshing.clear()
        digest = self._digest(key)
        self._entries[digest] = (tenant, now + self.ttl)
        self._refreshing.discard(digest)

    def forget(self, key: str) -> None:
        digest = self._digest(key)
        self._entries.pop(digest, None)
        self._refreshing.discard(digest)

    def clear(self) -> None:
        """Forget every key (a process that revokes a key itself calls this)."""
        self._entries.clear()
        self._refreshing.clear()
