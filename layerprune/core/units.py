"""Sizes as people read them: one rule for the CLI, the model card and the dashboard.

Decimal units (kB, MB, GB: powers of 1000, as disks and Hugging Face list files), one decimal,
rounded half up in integer arithmetic so that the dashboard's JavaScript port
(``api/static/dashboard.js`` ``fmtBytes``) gives the same string for every value.
"""

from __future__ import annotations

import math

_UNITS = (("GB", 10**9), ("MB", 10**6), ("kB", 10**3))


def human_bytes(n: float | int | None) -> str:
    """``219_500_000`` → ``"219.5 MB"``; ``None`` → ``"-"``."""
    if n is None:
        return "-"
    sign = "-" if n < 0 else ""
    whole = int(math.floor(abs(n) + 0.5))  # the JS port: Math.floor(Math.abs(n) + 0.5)
    for unit, size in _UNITS:
        if whole >= size:
            # Float formatting would round an exact tie (1250 B) half-even here and half-up in JS.
            tenths = (10 * whole + size // 2) // size
            return f"{sign}{tenths // 10}.{tenths % 10} {unit}"
    return f"{sign}{whole} B"
