"""A short in-process memory of verified API keys, so a poller's requests cost no key lookup.

Only keys the database accepted are remembered, for ``LAYERPRUNE_API_KEY_CACHE_SECONDS`` (default
5): a revoked key keeps working in a process that verified it for at most that long, and a new key
works at once (unknown keys are always looked up). The cache is keyed by a keyed BLAKE2b digest of
the key with a secret drawn per process, so the plain key is never kept and the entries are
useless outside this process; it does not depend on how ``db.keys`` stores key hashes.
"""

from __future__ import annotations

import hashlib
import secrets
import time

MAX_ENTRIES = 10_000


class KeyCache:
    """key → tenant for ``ttl`` seconds. Used from the event loop only (no lock needed)."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._secret = secrets.token_bytes(32)
        self._entries: dict[bytes, tuple[str, float]] = {}

    def _digest(self, key: str) -> bytes:
        return hashlib.blake2b(key.encode("utf-8"), key=self._secret, digest_size=32).digest()

    def get(self, key: str) -> str | None:
        if self.ttl <= 0:
            return None
        digest = self._digest(key)
        entry = self._entries.get(digest)
        if entry is None:
            return None
        tenant, expires = entry
        if time.monotonic() >= expires:
            del self._entries[digest]
            return None
        return tenant

    def put(self, key: str, tenant: str) -> None:
        if self.ttl <= 0:
            return
        now = time.monotonic()
        if len(self._entries) >= MAX_ENTRIES:
            self._entries = {d: e for d, e in self._entries.items() if e[1] > now}
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()  # a flood of distinct valid keys: start over rather than grow
        self._entries[self._digest(key)] = (tenant, now + self.ttl)

    def clear(self) -> None:
        """Forget every key (a process that revokes a key itself calls this)."""
        self._entries.clear()
