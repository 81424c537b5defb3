"""Opaque, random, prefixed ids (``job_…``, ``file_…``, ``evt_…``): never sequential, never guessable.

This module is the one source of their shape: ``could_be_id`` answers whether a string a client
sent could be an id of a kind at all, so the lookups can answer "not found" for one that cannot
(a NUL, a non-ASCII letter, a kilobyte of junk) without asking the database, which on Postgres
would refuse to compare a NUL at all instead of finding nothing as SQLite does.
"""

from __future__ import annotations

import secrets

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_ALPHABET_SET = frozenset(_ALPHABET)
LENGTH = 24  # random characters after the prefix: ~124 bits

# The kinds of row that carry one (the models' defaults name them here, not as loose strings).
JOB, FILE, EVENT, ARTIFACT, KEY, WEBHOOK_DELIVERY = "job", "file", "evt", "art", "key", "whd"
STUDY = "study"


def new_id(prefix: str, length: int = LENGTH) -> str:
    """``prefix`` + "_" + ``length`` random base-36 characters (~124 bits for the default length)."""
    return prefix + "_" + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def could_be_id(value: object, prefix: str) -> bool:
    """Whether ``value`` has the shape ``new_id(prefix)`` gives: the prefix, "_", ``LENGTH`` base-36 characters."""
    if not isinstance(value, str) or len(value) != len(prefix) + 1 + LENGTH or not value.startswith(prefix + "_"):
        return False
    for ch in value[len(prefix) + 1:]:
        if ch not in _ALPHABET_SET:
            return False
    return True
