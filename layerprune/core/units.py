"""Numbers as people read them: one rule for the CLI, the model card and the dashboard.

- Sizes: decimal units (kB, MB, GB: powers of 1000, as disks and Hugging Face list files), one
  decimal, rounded half up in integer arithmetic.
- Every other figure goes through :func:`fixed`: the exact value of the float rounded half away
  from zero, which is what JavaScript's ``toFixed``/``toExponential`` do, so that the dashboard's
  port (``api/static/format.js``) prints the same string for every value (tests/cli/test_units.py
  runs it in node against this module).
- :data:`FIELDS` says, once, what each reported figure is: its human label, unit, which way is
  better and how it is formatted. The dashboard reads it from ``GET /dashboard/fields.json``.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal, localcontext
from typing import Any

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


def fixed(x: float, digits: int) -> str:
    """``x`` with ``digits`` decimals, half away from zero on its exact value (JS ``toFixed``)."""
    with localcontext() as ctx:
        ctx.rounding = ROUND_HALF_UP
        return format(Decimal(x), f".{digits}f")


def scientific(x: float, digits: int = 2) -> str:
    """``24_925_910.06`` → ``"2.49e+7"`` (JS ``toExponential``)."""
    with localcontext() as ctx:
        ctx.rounding = ROUND_HALF_UP
        return format(Decimal(x), f".{digits}e").replace("E", "e")


def significant(x: float) -> str:
    """Three significant digits: ``652.7`` → ``"653"``, ``0.0523`` → ``"0.0523"``, ``24925.9`` → ``"2.49e+4"``."""
    if x == 0:
        return "0"
    # The exponent of the rounded value (999.6 has four digits once rounded to three).
    exp = int(scientific(x).split("e")[1])
    return scientific(x) if exp < -4 or exp >= 3 else fixed(x, 2 - exp)


def human_count(n: float | int | None) -> str:
    """``134_515_008`` → ``"134.5M"``; ``999`` → ``"999"``."""
    if n is None:
        return "-"
    n = float(n)
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return fixed(n / size, 1) + unit
    return fixed(n, 0)


# ----------------------------------------------------------------------------- field descriptors

# How a figure is written (format) and how its change is written:
#   count: 134.5M, change in percent; bytes: 269.1 MB, percent; int: 30, signed difference;
#   score: 0.520 (± stderr), signed difference; ppl: 18.99 (2.49e+7 from 1e5), percent or x ratio
#   past ten-fold; rate: 1234.5, the speed-up x1.30; ratio: x1.30.
# good: "lower" / "higher" is better; None: neither (a change is not judged).
FIELDS: dict[str, dict[str, Any]] = {
    "num_layers": {"label": "layers", "unit": "", "good": "lower", "format": "int"},
    "params": {"label": "parameters", "unit": "", "good": "lower", "format": "count"},
    "size_bytes": {"label": "size on disk", "unit": "", "good": "lower", "format": "bytes"},
    "perplexity": {"label": "perplexity", "unit": "", "good": "lower", "format": "ppl"},
    "mean_acc": {"label": "mean accuracy", "unit": "", "good": "higher", "format": "score"},
    "acc": {"label": "accuracy", "unit": "", "good": "higher", "format": "score"},
    "acc_norm": {"label": "accuracy (length-normalised)", "unit": "", "good": "higher", "format": "score"},
    "exact_match": {"label": "exact match", "unit": "", "good": "higher", "format": "score"},
    "prefill_tokens_per_s": {"label": "prefill speed", "unit": "tok/s", "good": "higher", "format": "rate"},
    "decode_tokens_per_s": {"label": "decode speed", "unit": "tok/s", "good": "higher", "format": "rate"},
    "speedup": {"label": "speed-up", "unit": "", "good": "higher", "format": "ratio"},
    "loss": {"label": "training loss", "unit": "nats", "good": "lower", "format": "score"},
}

# The evaluation tasks by the names their papers and lm-evaluation-harness give them.
TASK_LABELS: dict[str, str] = {
    "arc_easy": "ARC-Easy", "arc_challenge": "ARC-Challenge", "piqa": "PIQA", "hellaswag": "HellaSwag",
    "winogrande": "WinoGrande", "boolq": "BoolQ", "openbookqa": "OpenBookQA", "mmlu": "MMLU",
    "gsm8k": "GSM8K", "gsm8k_cot": "GSM8K (chain of thought)", "lambada_openai": "LAMBADA",
}


def field(name: str) -> dict[str, Any]:
    """The descriptor of ``name``; a task metric ``exact_match,strict-match`` is its metric's, and
    an unknown figure is a plain number that is not judged."""
    base = name.split(",", 1)[0]
    return FIELDS.get(name) or FIELDS.get(base) or {"label": name.replace("_", " "), "unit": "", "good": None,
                                                    "format": "number"}


def metric_label(name: str) -> str:
    """``exact_match,flexible-extract`` → ``"exact match (flexible-extract)"``: the field's label and
    the lm-eval filter that produced the figure."""
    base, _, filter_name = name.partition(",")
    label = field(base)["label"]
    return f"{label} ({filter_name})" if filter_name else label


def stderr_key(name: str) -> str:
    """Where a task result keeps ``name``'s standard error (lm-eval: ``exact_match_stderr,strict-match``)."""
    base, sep, filter_name = name.partition(",")
    return f"{base}_stderr{sep}{filter_name}"


def format_value(fmt: str, x: float | int | None) -> str:
    """One figure in its field's format (``"-"`` when missing)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if fmt == "bytes":
        return human_bytes(x)
    if fmt == "count":
        return human_count(x)
    if fmt == "int":
        return fixed(x, 0)
    if fmt == "score":
        return fixed(x, 3)
    if fmt == "ppl":
        return scientific(x) if abs(x) >= 1e5 else fixed(x, 2)
    if fmt == "rate":
        return fixed(x, 1)
    if fmt == "ratio":
        return "x" + fixed(x, 2)
    return scientific(x) if abs(x) >= 1e5 else fixed(x, 3 if abs(x) < 10 else 2)


def format_change(fmt: str, before: float | int | None, after: float | int | None) -> str:
    """The change from ``before`` to ``after`` as the field's format writes it ('' when unknown)."""
    if before is None or after is None:
        return ""
    if fmt in ("count", "bytes", "ppl", "number"):
        if not before:
            return ""
        ratio = after / before
        if fmt == "ppl" and (ratio >= 10 or ratio <= 0.1):
            return "x" + significant(ratio)
        return _signed(fixed(100 * (ratio - 1), 1)) + "%"
    if fmt == "rate":
        return "x" + fixed(after / before, 2) if before else ""
    if fmt == "int":
        return _signed(fixed(after - before, 0))
    return _signed(fixed(after - before, 3))


def _signed(text: str) -> str:
    return text if text.startswith("-") else "+" + text


def verdict(good: str | None, before: float | int | None, after: float | int | None) -> str:
    """``"good"``, ``"bad"`` or ``"same"`` for a change in a field whose ``good`` direction is given;
    ``""`` when it is not judged."""
    if good not in ("lower", "higher") or before is None or after is None:
        return ""
    if after == before:
        return "same"
    return "good" if (after < before) == (good == "lower") else "bad"


def fields_json() -> dict[str, Any]:
    """What the dashboard reads (``GET /dashboard/fields.json``)."""
    return {"fields": FIELDS, "tasks": TASK_LABELS}
