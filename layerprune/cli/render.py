"""Text the CLI prints: job tables, the before/after summary of a finished job, sizes and durations.

Pure functions of plain dicts, so they are tested on recorded results without a server.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# Every figure follows the one rule the model card and the dashboard use too (core.units).
from layerprune.core import units
from layerprune.core.evaluate.report import mean_accuracy, sample_pairs, speed_rows
from layerprune.core.units import human_bytes as human_bytes
from layerprune.core.units import human_count as human_count

BEFORE_KEYS = ("before", "base", "baseline", "original")
AFTER_KEYS = ("after", "result", "pruned", "final")
# Leaves of a metrics tree that are bookkeeping, not scores worth a row of the summary.
_SKIP_PARTS = (
    "stderr",
    "delta",
    "diff",
    "change",
    "seconds",
    "time",
    "count",
    "samples",
    "windows",
    "tokens",
    "ratio",
    "timing",
    "generation",
)
_SKIP_EXACT = ("n", "num_examples", "limit", "seq_len", "num_docs", "dataset", "bos")
# Shown in the table's first rows (layers, parameters, size), not again among the scores.
_SHAPE_KEYS = ("num_layers", "params", "size_bytes", "num_params", "parameters")


def human_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> str:
    """A plain aligned text table; ``align`` has one 'l' or 'r' per column (default: all left)."""
    body = [["" if c is None else str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in body:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    align = align or "l" * len(headers)

    def fmt(cells: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            out.append(cell.rjust(widths[i]) if align[i] == "r" else cell.ljust(widths[i]))
        return "  ".join(out).rstrip()

    lines = [fmt(list(headers)), fmt(["-" * w for w in widths])]
    lines.extend(fmt(row) for row in body)
    return "\n".join(lines)


def jobs_table(jobs: Iterable[Mapping[str, Any]]) -> str:
    rows = []
    for job in jobs:
        meta = ",".join(f"{k}={v}" for k, v in (job.get("metadata") or {}).items())
        progress = job.get("progress") or 0.0
        rows.append(
            [
                job.get("id"),
                job.get("status"),
                job.get("stage") or "-",
                f"{100 * float(progress):.0f}%",
                job.get("created_at") or "-",
                meta or "-",
            ]
        )
    return table(["ID", "STATUS", "STAGE", "PROGRESS", "CREATED", "METADATA"], rows, "lllrll")


# --------------------------------------------------------------------------- the before/after summary


def _leaves(tree: Any, path: tuple[str, ...] = ()) -> Iterable[tuple[tuple[str, ...], float]]:
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            yield from _leaves(value, (*path, str(key)))
    elif isinstance(tree, bool):
        return
    elif isinstance(tree, int | float) and math.isfinite(float(tree)):
        yield path, float(tree)


def _side_of(path: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """Split a leaf's path into its side ('before'/'after') and the metric's own path."""
    for i, part in enumerate(path):
        low = part.lower()
        if low in BEFORE_KEYS:
            return "before", path[:i] + path[i + 1 :]
        if low in AFTER_KEYS:
            return "after", path[:i] + path[i + 1 :]
    return "after", path  # an unlabelled score is the result's


def _is_score(path: tuple[str, ...]) -> bool:
    if not path or path[0] in _SHAPE_KEYS or path[0] == "speed":  # speed: its own rows (_speed_rows)
        return False
    for part in path:
        low = part.lower()
        if low in _SKIP_EXACT or any(s in low for s in _SKIP_PARTS):
            return False
    return True


def _metric_name(path: tuple[str, ...]) -> str:
    parts = [p for p in path if p.lower() not in ("tasks", "metrics", "scores", "value")]
    # {"perplexity": {"perplexity": 20.1}} reads as plain "perplexity".
    deduped: list[str] = []
    for part in parts:
        if not deduped or deduped[-1] != part:
            deduped.append(part)
    return " ".join(deduped) or "value"


def metric_pairs(metrics: Mapping[str, Any] | None) -> dict[str, tuple[float | None, float | None]]:
    """``{metric name: (before, after)}`` from a result's ``metrics``, whatever its nesting.

    Accepts ``{"before": {...}, "after": {...}}`` as well as ``{"perplexity": {"before": x,
    "after": y}}``; stderr, deltas and counts are left out. Perplexity comes first.
    """
    pairs: dict[str, list[float | None]] = {}
    for path, value in _leaves(metrics or {}):
        side, own = _side_of(path)
        if not _is_score(own):
            continue
        name = _metric_name(own)
        slot = pairs.setdefault(name, [None, None])
        slot[0 if side == "before" else 1] = value

    def order(name: str) -> tuple[int, str]:
        return (0 if "perplexity" in name or name.startswith("ppl") else 1, name)

    return {name: (pairs[name][0], pairs[name][1]) for name in sorted(pairs, key=order)}


def _find_pair(result: Mapping[str, Any], stems: Sequence[str]) -> tuple[Any, Any]:
    """``(before, after)`` of a shape figure: ``<stem>_before``/``_after`` keys of the result, or
    ``metrics.before.<stem>``/``metrics.after.<stem>`` where the evaluation measured it."""
    metrics = result.get("metrics") if isinstance(result.get("metrics"), Mapping) else {}
    for stem in stems:
        sides = [metrics.get(side) for side in ("before", "after")]
        if all(isinstance(side, Mapping) and side.get(stem) is not None for side in sides):
            return sides[0][stem], sides[1][stem]
        before = result.get(f"{stem}_before")
        after = result.get(f"{stem}_after")
        if before is not None or after is not None:
            return before, after
        nested = result.get(stem)
        if isinstance(nested, Mapping):
            return nested.get("before"), nested.get("after")
    return None, None


def _is_perplexity(name: str) -> bool:
    return "perplexity" in name or name.startswith("ppl")


def _fmt_of(name: str) -> str:
    """The units.FIELDS format of a row named "perplexity", "piqa acc", "gsm8k exact_match,strict-match"."""
    return "ppl" if _is_perplexity(name) else units.field(name.split()[-1])["format"]


def _fmt_score(name: str, value: float | None) -> str:
    return units.format_value(_fmt_of(name), value)


def _change(name: str, before: float | None, after: float | None, *, relative: bool) -> str:
    return units.format_change("count" if relative else _fmt_of(name), before, after)


def summary_table(result: Mapping[str, Any], artifacts: Sequence[Mapping[str, Any]] = ()) -> str:
    """The before/after table of a finished job: layers, parameters, size, perplexity, accuracy."""
    rows: list[list[str]] = []
    lb, la = _find_pair(result, ("num_layers", "layers"))
    rows.append(
        [
            "layers",
            str(lb) if lb is not None else "-",
            str(la) if la is not None else "-",
            f"{la - lb:+d}" if isinstance(lb, int) and isinstance(la, int) else "",
        ]
    )
    pb, pa = _find_pair(result, ("params", "num_params", "parameters"))
    rows.append(["parameters", human_count(pb), human_count(pa), _change("", pb, pa, relative=True)])
    sb, sa = _find_pair(result, ("size_bytes", "model_size_bytes", "size", "disk_bytes"))
    if sa is None and artifacts:
        weights = [a for a in artifacts if str(a.get("path", "")).endswith(".safetensors")]
        sa = sum(int(a.get("size_bytes") or 0) for a in weights) or None
    rows.append(["size on disk", human_bytes(sb), human_bytes(sa), _change("", sb, sa, relative=True)])
    for name, (before, after) in metric_pairs(result.get("metrics")).items():
        rows.append(
            [
                name,
                _fmt_score(name, before),
                _fmt_score(name, after),
                _change(name, before, after, relative=False),
            ]
        )
    rows += _speed_rows(result.get("metrics"))
    text = table(["", "before", "after", "change"], rows, "lrrr")
    sizes = _task_sizes(result.get("metrics"))
    if sizes:
        which = f"the first {sizes.pop()} examples of each" if len(sizes) == 1 else "the examples listed"
        if _has_generative(result.get("metrics")):
            # Generative tasks carry their metrics' direction; their shots are the task's own.
            text += (f"\ntasks: scored on {which} with each task's lm-evaluation-harness prompt and shots "
                     "(exact_match: greedy generation; perplexity: lower is better)")
        else:
            text += f"\ntasks: zero-shot accuracy on {which} (scored as lm-evaluation-harness scores them)"
    removed = result.get("removed_layers")
    if removed:
        text += "\nremoved layers (original numbering): " + ", ".join(str(i) for i in removed)
    return text + sample_answers(result.get("metrics"))


def comparison_table(results: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """Several finished jobs on one base model side by side: the base (first job's "before"), then each result.

    The same figures and formatting as :func:`summary_table`; a mean-accuracy row (report.mean_accuracy)
    and each model's answer to the jobs' sample prompts follow.
    """
    if not results:
        return ""
    base_metrics = results[0][1].get("metrics") if isinstance(results[0][1].get("metrics"), Mapping) else {}
    columns: list[tuple[str, Mapping[str, Any]]] = [("dense", base_metrics.get("before") or {})]
    columns += [(label, (r.get("metrics") or {}).get("after") or {}) for label, r in results]
    rows: list[list[str]] = [
        ["layers", *[str(c.get("num_layers", "-")) for _, c in columns]],
        ["parameters", *[human_count(c.get("params")) for _, c in columns]],
    ]
    names = list(metric_pairs({"before": columns[0][1]}))
    for name in names:
        values = [metric_pairs({"after": c}).get(name, (None, None))[1] for _, c in columns]
        cells = [_fmt_score(name, v) for v in values]
        if _is_perplexity(name):
            # How far each result is from the base, as summary_table's change column says it.
            cells[1:] = [f"{cell} ({_change(name, values[0], v, relative=False)})" if v is not None else cell
                         for cell, v in zip(cells[1:], values[1:], strict=True)]
        rows.append([name, *cells])
    means = [mean_accuracy(dict(c)) for _, c in columns]
    if any(m is not None for m in means):
        rows.append(["mean acc", *[_fmt_score("mean acc", m) for m in means]])
    text = table(["", *[label for label, _ in columns]], rows, "l" + "r" * len(columns))
    prompts = [s.get("prompt") for s in columns[0][1].get("samples") or []]
    for prompt in prompts:
        text += f"\n\nprompt: {prompt}"
        width = max(len(label) for label, _ in columns)
        for label, c in columns:
            answer = next((s.get("text", "") for s in c.get("samples") or [] if s.get("prompt") == prompt), "-")
            text += f"\n  {(label + ':').ljust(width + 1)} {_one_line(answer)}"
    return text


def sample_answers(metrics: Any) -> str:
    """The model's greedy answers to the job's fixed prompts, before and after (evaluate.samples)."""
    out = ""
    for prompt, before, after in sample_pairs(dict(metrics) if isinstance(metrics, Mapping) else None):
        out += f"\n\nprompt: {prompt}"
        if before is not None:
            out += f"\n  before: {_one_line(before)}"
        out += f"\n  after:  {_one_line(after)}"
    return out


def _one_line(text: str, width: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _speed_rows(metrics: Any) -> list[list[str]]:
    """Measured tokens/s (higher is better), change = the speed-up (one source: core.evaluate.report)."""
    if not isinstance(metrics, Mapping):
        return []
    return [[label, units.format_value("rate", before), units.format_value("rate", after),
             units.format_value("ratio", ratio) if ratio is not None else ""]
            for label, before, after, ratio in speed_rows(dict(metrics))]


def _has_generative(metrics: Any) -> bool:
    after = metrics.get("after") if isinstance(metrics, Mapping) else None
    tasks = after.get("tasks") if isinstance(after, Mapping) else None
    return any(isinstance(r, Mapping) and "higher_is_better" in r for r in (tasks or {}).values())


def _task_sizes(metrics: Any) -> set[int]:
    """How many examples each task was scored on (``n``), from the evaluated result."""
    sizes: set[int] = set()
    after = metrics.get("after") if isinstance(metrics, Mapping) else None
    tasks = after.get("tasks") if isinstance(after, Mapping) else None
    for scores in (tasks or {}).values():
        if isinstance(scores, Mapping) and isinstance(scores.get("n"), int):
            sizes.add(scores["n"])
    return sizes
