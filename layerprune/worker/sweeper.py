"""The background loop every API and worker process runs: outbox dispatch and the reaper.

- every ``dispatch_interval`` seconds, ``dispatch.dispatch_pending`` sends queued jobs that were
  never sent (the broker was down when they were committed) or whose message a broker lost;
- every ``reaper_interval`` seconds, ``db.queue.reap_expired`` re-queues (or fails) running jobs
  whose worker stopped heart-beating.

Both are safe to run in many processes at once (guarded UPDATEs; a double send is claimed once).
Errors (database or broker down) are logged and the loop carries on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from layerprune.settings import Settings, get_settings

log = logging.getLogger(__name__)


def sweep_once(session_factory: Callable[[], Any], *, dispatch: bool = True, reap: bool = True) -> dict[str, Any]:
    from layerprune.db.queue import reap_expired
    from layerprune.dispatch import dispatch_pending

    out: dict[str, Any] = {}
    if reap:
        with session_factory() as s:
            out["reaped"] = reap_expired(s)
    if dispatch:
        out["dispatched"] = dispatch_pending(session_factory)
        from layerprune.db.studies import finalize_finished

        with session_factory() as s:
            out["studies_finished"] = finalize_finished(s)
    return out


class Sweeper(threading.Thread):
    def __init__(self, session_factory: Callable[[], Any] | None = None, settings: Settings | None = None) -> None:
        super().__init__(name="layerprune-sweeper", daemon=True)
        self.settings = settings or get_settings()
        self._sf = session_factory
        self._halt = threading.Event()  # not _stop: Thread has a method of that name

    @property
    def session_factory(self) -> Callable[[], Any]:
        if self._sf is None:
            from layerprune.db.session import session_factory

            self._sf = session_factory()
        return self._sf

    def run(self) -> None:
        next_dispatch = next_reap = time.monotonic()
        tick = min(self.settings.dispatch_interval_seconds, self.settings.reaper_interval_seconds, 1.0)
        while not self._halt.wait(tick):
            now = time.monotonic()
            do_reap = now >= next_reap
            do_dispatch = now >= next_dispatch
            if not (do_reap or do_dispatch):
                continue
            try:
                res = sweep_once(self.session_factory, dispatch=do_dispatch, reap=do_reap)
                if res.get("reaped") or res.get("dispatched"):
                    log.info("sweep: %s", res)
            except Exception as exc:  # noqa: BLE001 - database/broker down: try again next tick
                log.warning("sweep failed: %s", exc)
            if do_reap:
                next_reap = now + self.settings.reaper_interval_seconds
            if do_dispatch:
                next_dispatch = now + self.settings.dispatch_interval_seconds

    def stop(self) -> None:
        self._halt.set()


def start_sweeper(session_factory: Callable[[], Any] | None = None, settings: Settings | None = None) -> Sweeper:
    sweeper = Sweeper(session_factory, settings)
    sweeper.start()
    return sweeper
