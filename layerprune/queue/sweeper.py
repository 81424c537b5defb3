"""The queue's housekeeping loop, one for the API and every worker process.

- every ``dispatch_interval_seconds``, ``outbox.dispatch_pending`` sends queued jobs that were
  never sent (the broker was down when they were committed) or whose message a broker lost;
- every ``reaper_interval_seconds``, ``transitions.reap_expired`` re-queues (or fails) running
  jobs whose worker stopped heart-beating, and idempotency keys older than
  ``idempotency_ttl_hours`` are deleted.

All of it is safe to run in many processes at once (guarded UPDATEs; a double send is claimed
once; deleting an expired key twice deletes it once). The API passes ``startup``: when the
database was down at start-up, the loop retries the migrations and key bootstrap until they
succeed, and sweeps only after. Errors (database or broker down) are logged and retried on the
next tick: the thread never dies.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from layerprune.db.idempotency import purge_expired
from layerprune.db.session import session_factory as default_session_factory
from layerprune.queue.outbox import dispatch_pending
from layerprune.queue.transitions import reap_expired
from layerprune.settings import Settings, get_settings

log = logging.getLogger(__name__)

# While the database is down at start-up, the start-up work is retried this often (each failed
# try logs a warning).
STARTUP_RETRY_SECONDS = 5.0


def sweep_once(session_factory: Callable[[], Any], settings: Settings | None = None, *,
               dispatch: bool = True, reap: bool = True) -> dict[str, Any]:
    """One pass: ``reap`` recovers expired leases and purges expired idempotency keys; ``dispatch``
    sends the outbox. Returns what it did: ``reaped`` (job ids), ``purged_keys``, ``dispatched``."""
    settings = settings or get_settings()
    out: dict[str, Any] = {}
    if reap:
        with session_factory() as session:
            out["reaped"] = reap_expired(session)
        with session_factory() as session:
            out["purged_keys"] = purge_expired(session, settings.idempotency_ttl_hours)
            session.commit()
    if dispatch:
        out["dispatched"] = dispatch_pending(session_factory)
    return out


class Sweeper(threading.Thread):
    def __init__(self, session_factory: Callable[[], Any] | None = None, settings: Settings | None = None, *,
                 startup: Callable[[], bool] | None = None, name: str = "layerprune-sweeper") -> None:
        super().__init__(name=name, daemon=True)
        self.settings = settings or get_settings()
        self._sf = session_factory
        self.startup = startup  # returns True once start-up work (migrate, keys) is done
        self._halt = threading.Event()  # not _stop: Thread has a method of that name

    @property
    def session_factory(self) -> Callable[[], Any]:
        if self._sf is None:  # built here, not at construction: the database may be down then
            self._sf = default_session_factory()
        return self._sf

    def run(self) -> None:
        next_dispatch = next_reap = next_startup = 0.0  # all at once on start
        tick = min(self.settings.dispatch_interval_seconds, self.settings.reaper_interval_seconds, 1.0)
        while not self._halt.is_set():
            now = time.monotonic()
            try:
                if self.startup is not None and now >= next_startup:
                    next_startup = now + STARTUP_RETRY_SECONDS
                    if self.startup():
                        self.startup = None
                if self.startup is None:
                    do_reap, do_dispatch = now >= next_reap, now >= next_dispatch
                    if do_reap:
                        next_reap = now + self.settings.reaper_interval_seconds
                    if do_dispatch:
                        next_dispatch = now + self.settings.dispatch_interval_seconds
                    if do_reap or do_dispatch:
                        self._log(sweep_once(self.session_factory, self.settings,
                                             dispatch=do_dispatch, reap=do_reap))
            except Exception as exc:  # noqa: BLE001 - database/broker down: try again next tick
                log.warning("sweep failed: %s: %s", type(exc).__name__, exc)
            self._halt.wait(tick)

    @staticmethod
    def _log(res: dict[str, Any]) -> None:
        if res.get("reaped"):
            log.warning("re-queued or failed jobs with expired leases", extra={"job_ids": res["reaped"]})
        if res.get("dispatched") or res.get("purged_keys"):
            log.info("sweep: %s", {k: v for k, v in res.items() if k != "reaped"})

    def stop(self, timeout: float = 5.0) -> None:
        self._halt.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)


def start_sweeper(session_factory: Callable[[], Any] | None = None, settings: Settings | None = None, *,
                  startup: Callable[[], bool] | None = None) -> Sweeper:
    sweeper = Sweeper(session_factory, settings, startup=startup)
    sweeper.start()
    return sweeper
