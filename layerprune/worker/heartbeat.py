"""The lease keeper of a running job: a thread that proves the worker is alive.

Every ``interval`` seconds it extends the job's lease (``queue.transitions.heartbeat``). Between beats it
polls the job's status more often (``poll`` seconds, a cheap SELECT) so that a cancel request is
seen within seconds, not one heartbeat later. Once the job is cancelling or no longer this
worker's, it sets ``stop`` — the flag core's ``hooks.should_stop`` reads. A database that is
briefly unreachable is not a reason to stop: the beat is retried at the next tick; if the outage
outlasts the lease, the reaper hands the job to another attempt and the next successful beat
reports it as taken away.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from layerprune.db.models import Job
from layerprune.queue.status import TERMINAL_STATUSES, JobStatus
from layerprune.queue.transitions import heartbeat

log = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    def __init__(self, session_factory: Callable[[], Any], job_id: str, worker_id: str, *,
                 lease_s: float, interval: float, poll: float = 1.0,
                 stop: threading.Event | None = None) -> None:
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.session_factory = session_factory
        self.job_id = job_id
        self.worker_id = worker_id
        self.lease_s = lease_s
        self.interval = interval
        self.poll = min(poll, interval)
        self.stop = stop or threading.Event()  # set: the job must stop (cancel / lost)
        self.reason: str | None = None  # "cancelling" | "lost"
        self._done = threading.Event()

    def run(self) -> None:
        last_beat = time.monotonic()
        while not self._done.wait(self.poll):
            try:
                if time.monotonic() - last_beat >= self.interval:
                    with self.session_factory() as s:
                        alive = heartbeat(s, self.job_id, self.worker_id, self.lease_s)
                    last_beat = time.monotonic()
                    if not alive:
                        self._stop_for(self._status())
                else:
                    status = self._status()
                    if status != JobStatus.RUNNING:
                        self._stop_for(status)
            except Exception as exc:  # noqa: BLE001 - the database may be restarting; retry next tick
                log.warning("heartbeat of %s failed: %s", self.job_id, exc)

    def _status(self) -> str | None:
        with self.session_factory() as s:
            row = s.execute(select(Job.status, Job.worker_id).where(Job.id == self.job_id)).first()
        if row is None or row.worker_id != self.worker_id:
            return "lost"
        return row.status

    def _stop_for(self, status: str | None) -> None:
        if self.stop.is_set():
            return
        if status in TERMINAL_STATUSES:
            self.reason = status  # this worker just ended it: nothing to stop
        else:
            self.reason = "cancelling" if status == JobStatus.CANCELLING else "lost"
            log.info("job %s: stopping (%s)", self.job_id, self.reason)
        self.stop.set()

    def close(self) -> None:
        self._done.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=10)
