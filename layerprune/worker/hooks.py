"""Core :class:`Hooks` that report a running job into its events and row.

- stage progress becomes the job's overall ``progress`` (each stage an equal share) and, at most
  every ``interval`` seconds, a ``progress`` event carrying the latest training metrics (step,
  loss, tokens/s, ETA);
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

from layerprune.core.hooks import Hooks
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
        self.stage_index = 0
        self.latest: dict[str, Any] = {}
        self._last_emit = 0.0
        self._infos = 0

    def _write(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        try:
            with self.sf() as s:
                fn(s, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - see module doc
            log.warning("job %s: could not record %s: %s", self.job_id, getattr(fn, "__name__", fn), exc)

    def overall(self, fraction: float) -> float:
        n = max(len(self.stages), 1)
        return min(1.0, (self.stage_index + max(0.0, min(1.0, fraction))) / n)

    def on_stage(self, stage: str) -> None:
        self.stage = stage
        self.stage_index = self.stages.index(stage) if stage in self.stages else self.stage_index
        self.latest = {}
        self._last_emit = 0.0
        self._write(set_stage, self.job_id, self.worker_id, stage, self.overall(0.0))

    def progress(self, done: float, total: float, message: str) -> None:
        frac = done / total if total else 0.0
        now = time.monotonic()
        if now - self._last_emit < self.interval and done < total:
            return
        self._last_emit = now
        data = {"stage": self.stage, "done": done, "total": total, "stage_progress": frac, **self.latest}
        self._write(set_progress, self.job_id, self.worker_id, self.overall(frac),
                    event=_json_safe(data), message=message or f"{self.stage} {frac:.0%}")

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
        return Hooks(progress=self.progress, should_stop=self.stop.is_set, metrics=self.metrics, log=self.log)
