"""A live progress line drawn from a job's events.

On a terminal one line is redrawn in place (``\\r``) and other events print above it; in a log
file (not a TTY) a progress line is printed at most every ``log_every`` seconds, so CI logs stay
readable. Events are whatever the worker sends: the view reads ``progress``, ``stage``, ``part``,
``task`` (with ``task_done``/``task_total`` documents), ``step``, ``total_steps``, ``loss``,
``tokens_per_s`` and ``eta_s`` from ``data`` (or the event itself) where present and ignores
what it does not know. Every bar is labelled with what it measures: ``evaluate · after · piqa
12/25`` is the result's PIQA pass, 12 of its 25 documents scored.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from layerprune.cli.render import human_count, human_duration
from layerprune.client import Event, Job

_WIDTH = 28
# What the line shows, and the names workers may give it in an event's data.
_DETAILS = {
    "step": ("step", "done"),
    "total_steps": ("total_steps", "max_steps", "total"),
    "loss": ("loss", "train_loss"),
    "tokens_per_s": ("tokens_per_s", "tokens_per_second", "tok_per_s", "throughput"),
    "eta_s": ("eta_s", "eta_seconds", "eta"),
}


def _num(value: Any) -> float | None:
    try:
        return None if value is None or isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return None


class ProgressView:
    def __init__(
        self, out: TextIO | None = None, *, tty: bool | None = None, log_every: float = 10.0
    ) -> None:
        self.out = out or sys.stdout
        self.tty = self.out.isatty() if tty is None else tty
        self.log_every = log_every
        self.stage: str | None = None
        self.status: str | None = None
        self.progress = 0.0
        self.stage_progress: float | None = None
        self.details: dict[str, float] = {}
        self.part: str | None = None  # e.g. "before"/"after" in the evaluate stage
        self.task: str | None = None  # e.g. "perplexity", "piqa"
        self.task_count: tuple[float, float] | None = None
        self._drawn = False
        self._last_log = 0.0
        self._started = time.monotonic()

    # ----------------------------------------------------------------- input

    def on_job(self, job: Job) -> None:
        """Take status, stage and overall progress from a polled job object."""
        changed = job.status != self.status
        if job.stage and job.stage != self.stage:
            self._new_stage(job.stage)
        self.status = job.status
        self.progress = max(self.progress, float(job.progress or 0.0))
        if changed:
            self._print(f"job {job.status}")
        self._draw()

    def on_event(self, event: Event) -> None:
        data = {**{k: v for k, v in event.raw.items() if k not in ("data", "message")}, **event.data}
        stage = data.get("stage")
        if isinstance(stage, str) and stage != self.stage:
            self._new_stage(stage)
        if event.type == "progress":
            self.part = data.get("part") if isinstance(data.get("part"), str) else None
            self.task = data.get("task") if isinstance(data.get("task"), str) else None
            done, total = _num(data.get("task_done")), _num(data.get("task_total"))
            self.task_count = (done, total) if done is not None and total else None
        progress = _num(data.get("progress"))
        if progress is not None and event.type != "state":
            # The job's progress never goes backwards (the worker guarantees it; so does the view).
            self.progress = max(self.progress, min(1.0, progress if progress <= 1.0 else progress / 100.0))
        stage_progress = _num(data.get("stage_progress"))
        if stage_progress is not None:
            self.stage_progress = max(0.0, min(1.0, stage_progress))
        status = data.get("status")
        if isinstance(status, str):
            self.status = status
        for key, aliases in _DETAILS.items():
            for alias in aliases:
                value = _num(data.get(alias))
                if value is not None:
                    self.details[key] = value
                    break
        if event.type != "progress" and (event.message or event.type):
            level = "" if event.level in ("info", "") else f"{event.level.upper()}: "
            self._print(f"{level}{event.message or event.type}")
        self._draw()

    def _new_stage(self, stage: str) -> None:
        self.stage, self.stage_progress, self.details = stage, None, {}
        self.part = self.task = None
        self.task_count = None

    # ----------------------------------------------------------------- output

    def label(self) -> str:
        """What the bar measures: the stage, then the part and task within it."""
        words = [self.stage or self.status or "queued"]
        if self.part:
            words.append(self.part)
        if self.task:
            count = f" {self.task_count[0]:.0f}/{self.task_count[1]:.0f}" if self.task_count else ""
            words.append(self.task + count)
        return " · ".join(words)

    def line(self) -> str:
        # The bar is the current stage's; the job's overall share follows it in brackets.
        frac = self.stage_progress if self.stage_progress is not None else self.progress
        filled = int(round(frac * _WIDTH))
        bar = "#" * filled + "." * (_WIDTH - filled)
        parts = [f"{self.label():<9}", f"[{bar}]", f"{100 * frac:3.0f}%"]
        d = self.details
        if "step" in d and self.task_count is None:  # documents are already in the label
            total = f"/{d['total_steps']:.0f}" if "total_steps" in d else ""
            parts.append(f"{d['step']:.0f}{total}")
        if "loss" in d:
            parts.append(f"loss {d['loss']:.3f}")
        if "tokens_per_s" in d:
            parts.append(f"{human_count(d['tokens_per_s'])} tok/s")
        if "eta_s" in d:
            parts.append(f"ETA {human_duration(d['eta_s'])}")
        parts.append(f"(job {100 * self.progress:.0f}%, {human_duration(time.monotonic() - self._started)})")
        return "  ".join(parts)

    def _print(self, text: str) -> None:
        if self.tty and self._drawn:
            self.out.write("\r\x1b[2K")
            self._drawn = False
        self.out.write(text + "\n")
        self.out.flush()

    def _draw(self) -> None:
        now = time.monotonic()
        if self.tty:
            self.out.write("\r\x1b[2K" + self.line())
            self._drawn = True
            self.out.flush()
        elif now - self._last_log >= self.log_every:
            self._last_log = now
            self.out.write(self.line() + "\n")
            self.out.flush()

    def close(self) -> None:
        if self.tty and self._drawn:
            self.out.write("\n")
            self.out.flush()
            self._drawn = False
