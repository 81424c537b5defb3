"""Each job's JSON as ``GET /v1/jobs/{id}`` answers it, kept in memory while nothing changed it (issue 11).

A poller's GET is then a dictionary look-up on the event loop: no worker thread, no query of
the job, no validation. Only a change feed (:mod:`layerprune.api.job_changes`) makes an entry
trustworthy: before answering from memory the cache waits until the feed has reported every
change committed before the request (so a GET never misses a commit that finished before it was
sent, whichever process made it), and it serves nothing while its feed is not working: on
Postgres while the NOTIFY listener is down or not yet confirmed, on SQLite when the change
counter cannot be read. Every GET then reads the database, as if there were no cache.

A body read from the database is kept only if no change was seen while it was being read: the
cache's ``generation`` grows with every change the feed reports, and :meth:`JobCache.store` refuses
a body read under an older generation. So a read that raced a commit is answered (it is as fresh
as a read without a cache) but never served again.

Used from the event loop only (no lock). Bounded: at most ``MAX_ENTRIES`` jobs, then it starts over.
"""

from __future__ import annotations

from typing import Protocol

MAX_ENTRIES = 10_000
# Where api/job_poll.py leaves a miss's (tenant, job id, generation) for the route (an ASGI scope key).
GENERATION_SCOPE_KEY = "layerprune.job_cache_generation"


class ChangeFeed(Protocol):
    async def caught_up(self, cache: JobCache) -> bool:
        """Report to ``cache`` every change committed before this call; False: the feed is down."""

    def up(self) -> bool:
        """Whether the feed is working (entries may be kept)."""

    def start(self, cache: JobCache) -> None:
        """Begin watching (on the running event loop)."""

    async def stop(self) -> None: ...


class JobCache:
    """job id → (tenant, JSON body), valid while the feed reports no change to the job."""

    def __init__(self, feed: ChangeFeed) -> None:
        self.feed = feed
        self.generation = 0
        self._entries: dict[str, tuple[str, bytes]] = {}

    async def lookup(self, tenant: str, job_id: str) -> tuple[bytes | None, int | None]:
        """(the cached body or None, the generation to :meth:`store` a fresh read under; None: don't).

        A body is answered only after the feed caught up with every commit made before the call,
        so it reflects them all (the feed drops the entries they touched first).
        """
        if not await self.feed.caught_up(self):
            return None, None
        entry = self._entries.get(job_id)
        if entry is None or entry[0] != tenant:  # another tenant's id reads the database (and is a 404)
            return None, self.generation
        return entry[1], self.generation

    def store(self, tenant: str, job_id: str, body: bytes, generation: int | None) -> None:
        if generation is None or generation != self.generation or not self.feed.up():
            return  # the feed saw a change (or went down) while the body was read
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[job_id] = (tenant, body)

    def changed(self, job_id: str) -> None:
        """The job's row changed (or was deleted)."""
        self.generation += 1
        self._entries.pop(job_id, None)

    def changed_all(self) -> None:
        """Anything may have changed (a commit to SQLite, the listener lost or regained)."""
        self.generation += 1
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
