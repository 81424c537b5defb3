"""How long-running core work talks to whoever runs it (worker, CLI, notebook, test).

Core never knows whether progress lands in a job's events, a progress bar or nowhere: it calls
the functions in a :class:`Hooks`. ``check()`` is called between units of work (a calibration
batch, a layer, a training step) and raises :class:`Cancelled` once ``should_stop`` says so,
so a cancel takes effect within one unit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from layerprune.core.errors import Cancelled

ProgressFn = Callable[[float, float, str], None]
"""progress(done, total, message)."""

MetricsFn = Callable[[Mapping[str, Any]], None]
"""metrics({"step":…, "loss":…, "lr":…, "tokens_per_s":…, "eta_s":…}) from training loops."""

LogFn = Callable[[str, str, Mapping[str, Any]], None]
"""log(level, message, data) for warnings and notable facts ("info", "warning")."""


def _noop(*_: Any) -> None:
    return None


def _never() -> bool:
    return False


@dataclass
class Hooks:
    progress: ProgressFn = _noop
    should_stop: Callable[[], bool] = _never
    metrics: MetricsFn = _noop
    log: LogFn = _noop

    def check(self) -> None:
        """Raise Cancelled if the run was asked to stop."""
        if self.should_stop():
            raise Cancelled()

    def warn(self, message: str, **data: Any) -> None:
        self.log("warning", message, data)

    def info(self, message: str, **data: Any) -> None:
        self.log("info", message, data)


NO_HOOKS = Hooks()
