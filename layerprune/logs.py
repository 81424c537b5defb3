"""Structured JSON logs that carry the job id and tenant in context; secrets never appear.

``bind(job_id=…, tenant=…)`` sets context for the current thread/task (contextvars), and every
record logged meanwhile carries those fields. API keys are never passed to a logger; as a second
line of defence, the formatter masks anything that looks like a bearer token.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("layerprune_log_context", default={})  # noqa: B039 - never mutated
_BEARER = re.compile(r"(?i)(bearer\s+)\S+")
_STD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


@contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Add ``fields`` (job_id, tenant, worker_id…) to every log record inside the block."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": _BEARER.sub(r"\1***", record.getMessage()),
        }
        out.update(_context.get())
        for key, value in vars(record).items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


_factory_installed = False


def install_context_factory() -> None:
    """Copy the bound fields onto each record when it is created (in the logging thread's
    context), so any handler — not only ours — sees job_id and tenant. Idempotent."""
    global _factory_installed
    if _factory_installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return record

    logging.setLogRecordFactory(factory)
    _factory_installed = True


def configure_logging(level: str = "INFO", json_logs: bool = True) -> None:
    """Install one stderr handler on the root logger (idempotent)."""
    install_context_factory()
    root = logging.getLogger()
    for handler in root.handlers:
        if getattr(handler, "_layerprune", False):
            root.setLevel(level.upper())
            return
    handler = logging.StreamHandler(sys.stderr)
    handler._layerprune = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if json_logs else logging.Formatter("%(levelname)s %(name)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
