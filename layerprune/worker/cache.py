"""The worker's :class:`~layerprune.core.scoring.cache.ResultCache`: JSON files under one folder.

``<root>/<kind>/<digest>.json`` holds a value; ``<digest>.lock`` is taken with ``fcntl.flock``
while it is computed, so two workers (processes on one host, or hosts sharing the folder over a
file system with working locks) asking for one key at once compute it once: the second waits,
then reads the first one's file. A waiter polls its lock rather than blocking on it, so a cancel
of its job still stops it within a poll. A value is written to a temporary file and renamed, so
a reader never sees half of one; a file that does not parse (a disk that filled) is computed
again. The root is ``settings.cache_dir`` (default ``data_dir/cache``); deleting it is always
safe (the next job computes again).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from layerprune.core.scoring.cache import cache_key

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5


class FileResultCache:
    def __init__(self, root: Path, poll_seconds: float = POLL_SECONDS) -> None:
        self.root = Path(root)
        self.poll_seconds = poll_seconds

    def _read(self, path: Path) -> tuple[bool, Any]:
        try:
            return True, json.loads(path.read_text(encoding="utf-8"))["value"]
        except FileNotFoundError:
            return False, None
        except (OSError, ValueError, KeyError) as exc:
            log.warning("cache entry %s unreadable (%s); computing it again", path.name, exc)
            return False, None

    def get_or_compute(self, kind: str, key: Mapping[str, Any], compute: Callable[[], Any],
                       check: Callable[[], None] | None = None) -> tuple[Any, bool]:
        digest = cache_key(kind, key)
        folder = self.root / kind
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{digest}.json"
        found, value = self._read(path)
        if found:
            return value, True
        with open(folder / f"{digest}.lock", "a+b") as lock:
            while True:
                try:
                    fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:  # another worker is computing it: wait for its result
                    if check is not None:
                        check()
                    time.sleep(self.poll_seconds)
            try:
                found, value = self._read(path)  # computed while we waited
                if found:
                    return value, True
                value = compute()
                tmp = folder / f".{digest}.{os.getpid()}.tmp"
                with open(tmp, "w", encoding="utf-8") as fh:
                    json.dump({"kind": kind, "key": dict(key), "value": value}, fh, default=str)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
                return value, False
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
