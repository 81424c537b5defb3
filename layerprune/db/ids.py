"""Opaque, random, prefixed ids (``job_…``, ``file_…``, ``evt_…``): never sequential, never guessable."""

from __future__ import annotations

import secrets

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def new_id(prefix: str, length: int = 24) -> str:
    """``prefix`` + "_" + ``length`` random base-36 characters (~124 bits for the default length)."""
    return prefix + "_" + "".join(secrets.choice(_ALPHABET) for _ in range(length))
