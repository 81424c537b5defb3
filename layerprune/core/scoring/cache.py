"""Work that many jobs share, done once: a tiny cache protocol core asks, whoever runs it answers.

A study runs one job per recipe; several of them score the same model with the same metric on
the same calibration data, and all of them compare with the same evaluation of the input model.
Core computes those through a :class:`ResultCache` when the caller gives one, keyed by a content
hash (:func:`cache_key`) of everything the result depends on, and never knows where the cache
lives (the worker keeps files under its data directory, with a lock so that two workers asking
for the same key at once compute it once: ``layerprune.worker.cache``). Without a cache
(``None``: the CLI, a notebook, a test) everything is computed as before.

Values are JSON (lists of floats, evaluation reports); a value that does not survive a JSON round
trip must not be cached.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Protocol

from layerprune import __version__

# What is cached, by kind (one folder each in the file cache).
LAYER_SCORES = "layer_scores"
BASE_EVALUATION = "base_evaluation"
KEY_VERSION = 1  # bump when a key's meaning changes: older entries are then simply never found


class ResultCache(Protocol):
    def get_or_compute(self, kind: str, key: Mapping[str, Any], compute: Callable[[], Any],
                       check: Callable[[], None] | None = None) -> tuple[Any, bool]:
        """The value stored under ``(kind, key)``, or ``compute()``'s stored once computed.

        Returns ``(value, hit)``. While another process computes the same key this waits for it
        (calling ``check`` between polls, so a cancel still stops the wait) and then reads its value.
        """
        ...


@functools.cache
def software() -> dict[str, str | None]:
    """The versions that compute the figures: an upgrade (a fixed metric, a new kernel) never reads
    what the previous version stored."""
    out: dict[str, str | None] = {"layerprune": __version__}
    for name in ("torch", "transformers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def cache_key(kind: str, key: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of ``key`` (key order and spacing do not count), ``kind`` and
    :func:`software`."""
    payload = json.dumps({"kind": kind, "v": KEY_VERSION, "software": software(), "key": key}, sort_keys=True,
                         separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def model_identity(files: Mapping[str, str]) -> str:
    """One digest of a model directory's content (relative path -> sha256 of each file).

    The content, not the reference: the same weights under two names share their scores, and a
    hub revision that changed the weights does not.
    """
    return hashlib.sha256(json.dumps(dict(sorted(files.items())), separators=(",", ":")).encode()).hexdigest()
