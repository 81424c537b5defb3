"""Core :class:`Hooks` that report a running job into its events and row.

- stage progress becomes the job's overall ``progress`` (core.progress.JobProgress: each stage
  its measured share, never backwards) and, at most every ``interval`` seconds, a ``progress``
  event carrying the stage, the part and task being worked on (``detail``: ``part``, ``task``,
  ``task_done``/``task_total`` documents) and the latest training metrics (step, loss, tokens/s, ETA);
- warnings become ``warning`` events (never rate-limited), info logs ``log`` events (limited);
- ``should_stop`` reads the heartbeat's stop flag.

A failed write (database restarting) is logged and dropped: reporting must never kill a job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import select

from layerprune.core.hooks import Hooks
from layerprune.core.progress import JobProgress
from layerprune.db.models import Job
from layerprune.queue.transitions import add_job_event, set_progress, set_stage

log = logging.getLogger(__name__)

MAX_INFO_EVENTS = 200  # per job: a chatty stage must not flood the event table


def _json_safe(data: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, str | int | bool) or v is None:
            out[str(k)] = v
        elif isinstance(v, float):
            out[str(k)] = v if v == v and abs(v) != float("inf") else None  # NaN/inf are not JSON
        elif isinstance(v, list | tuple):
            out[str(k)] = [x if isinstance(x, str | int | float | bool) else str(x) for x in v]
        elif isinstance(v, Mapping):  # one level: {"arc_easy": [done, total], ...}
            out[str(k)] = _json_safe(v)
        else:
            out[str(k)] = str(v)
    return out


class JobReporter:
    """Turns core callbacks into job row updates and events (see module doc)."""

    def __init__(self, session_factory: Callable[[], Any], job_id: str, worker_id: str,
                 stages: list[str], stop: threading.Event, *, interval: float = 2.0) -> None:
        self.sf = session_factory
        self.job_id = job_id
        self.worker_id = worker_id
        self.stages = stages
        self.stop = stop
        self.interval = interval
        self.stage: str | None = None
        self.job_progress = JobProgress(stages)
        # A retried attempt resumes where the last one left the row: the number never goes back.
        self.job_progress.value = self._stored_progress()
        self.latest: dict[str, Any] = {}
        self.current: dict[str, Any] = {}  # the latest detail: part, task, documents done
        self._last_emit = 0.0
        self._infos = 0

    def _stored_progress(self) -> float:
        try:
            with self.sf() as s:
                return float(s.scalar(select(Job.progress).where(Job.id == self.job_id)) or 0.0)
        except Exception as exc:  # noqa: BLE001 - see module doc
            log.warning("job %s: could not read its progress: %s", self.job_id, exc)
            return 0.0

    def _write(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        try:
            with self.sf() as s:
                fn(s, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - see module doc
            log.warning("job %s: could not record %s: %s", self.job_id, getattr(fn, "__name__", fn), exc)

    def overall(self, fraction: float) -> float:
        return self.job_progress.overall(self.stage, fraction)

    def on_stage(self, stage: str) -> None:
        self.stage = stage
        self.latest = {}
        self.current = {}
        self._last_emit = 0.0
        self._write(set_stage, self.job_id, self.worker_id, stage, self.overall(0.0))

    def progress(self, done: float, total: float, message: str) -> None:
        frac = done / total if total else 0.0
        now = time.monotonic()
        if now - self._last_emit < self.interval and done < total:
            return
        self._last_emit = now
        data = {"stage": self.stage, "done": done, "total": total, "stage_progress": frac, **self.latest,
                **self.current}
        overall = self.overall(frac)
        data["progress"] = overall
        self._write(set_progress, self.job_id, self.worker_id, overall,
                    event=_json_safe(data), message=message or f"{self.stage} {frac:.0%}")

    def detail(self, values: Mapping[str, Any]) -> None:
        self.current = dict(values)

    def metrics(self, values: Mapping[str, Any]) -> None:
        # Kept and attached to the next progress event (training loops report both).
        self.latest.update(_json_safe(values))

    def log(self, level: str, message: str, data: Mapping[str, Any]) -> None:
        if level in ("warning", "error"):
            self._write(add_job_event, self.job_id, "warning", message, level="warning", data=_json_safe(data))
            return
        self._infos += 1
        if self._infos <= MAX_INFO_EVENTS:
            self._write(add_job_event, self.job_id, "log", message, data=_json_safe(data))

    def hooks(self) -> Hooks:
        return Hooks(progress=self.progress, should_stop=self.stop.is_set, metrics=self.metrics, log=self.log,
                     detail=self.detail)
