"""The API's housekeeping thread: outbox dispatch, the lease reaper, and start-up retries.

Every few seconds (settings.dispatch_interval_seconds / reaper_interval_seconds) it sends queued
jobs that the broker did not take at POST time and re-queues or fails jobs whose worker stopped
heart-beating. Workers run the same sweeps; both are safe to run in several processes. When the
database was down at start-up, the thread also retries migrations and key bootstrap until they
succeed. Errors are logged and retried on the next tick: the thread never dies.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class Housekeeper(threading.Thread):
    def __init__(self, session_factory: Callable[[], Any], settings: Any,
                 startup: Callable[[], bool] | None = None) -> None:
        super().__init__(name="layerprune-api-housekeeping", daemon=True)
        self.session_factory = session_factory
        self.settings = settings
        self.startup = startup  # returns True once start-up work (migrate, keys) is done
        self._halt = threading.Event()

    def stop(self, timeout: float = 5.0) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout)

    def run(self) -> None:
        next_dispatch = next_reap = 0.0
        while not self._halt.is_set():
            now = time.monotonic()
            try:
                if self.startup is not None and self.startup():
                    self.startup = None
                if self.startup is None and now >= next_dispatch:
                    next_dispatch = now + self.settings.dispatch_interval_seconds
                    from layerprune.dispatch import dispatch_pending

                    dispatch_pending(self.session_factory)
                if self.startup is None and now >= next_reap:
                    next_reap = now + self.settings.reaper_interval_seconds
                    from layerprune.db.queue import reap_expired

                    with self.session_factory() as session:
                        reaped = reap_expired(session)
                    if reaped:
                        log.warning("re-queued or failed jobs with expired leases", extra={"job_ids": reaped})
                    from layerprune.db.studies import finalize_finished

                    with self.session_factory() as session:
                        finalize_finished(session)
                    from layerprune.db.idempotency import purge_expired

                    with self.session_factory() as session:
                        purge_expired(session, self.settings.idempotency_ttl_hours)
                        session.commit()
            except Exception as exc:  # noqa: BLE001 - the DB or broker is away: next tick retries
                log.warning("housekeeping failed: %s: %s", type(exc).__name__, exc)
            self._halt.wait(min(self.settings.dispatch_interval_seconds, self.settings.reaper_interval_seconds, 5.0))
