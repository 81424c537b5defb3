"""Pareto fronts of a study's candidates and the recommendation among them. Pure functions.

A candidate is on the **params front** when no other candidate has at least its quality with at
most its parameters and is strictly better in one of the two; on the **speed front** likewise
with speed-up (more is better) instead of parameters. Candidates without a quality (not
finished, failed) are on no front; without a measured speed-up, on no speed front.

**Recommendation**: among the candidates that meet the constraints (``max_params``,
``min_speedup``), those on the params front; of these the best quality, ties broken by fewer
parameters, then by the order of the candidates. None when no candidate qualifies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Point:
    key: str  # the candidate's job id
    quality: float | None
    params: int | None
    speedup: float | None


def _better(a: float, b: float, higher_is_better: bool) -> bool:
    return a > b if higher_is_better else a < b


def _at_least(a: float, b: float, higher_is_better: bool) -> bool:
    return a >= b if higher_is_better else a <= b


def _front(points: Sequence[Point], other: Callable[[Point], float | None], higher_is_better: bool) -> list[str]:
    """Keys of the candidates no other one dominates on (quality, ``other``), ``other`` higher-is-better.

    q dominates p when it is at least as good on both axes and better on one.
    """
    ok = [(p, p.quality, other(p)) for p in points if p.quality is not None and other(p) is not None]
    front = []
    for p, pq, po in ok:
        dominated = False
        for q, qq, qo in ok:
            if q is p:
                continue
            assert pq is not None and po is not None and qq is not None and qo is not None
            if _at_least(qq, pq, higher_is_better) and qo >= po and (_better(qq, pq, higher_is_better) or qo > po):
                dominated = True
                break
        if not dominated:
            front.append(p.key)
    return front


def params_front(points: Sequence[Point], higher_is_better: bool) -> list[str]:
    """Keys of the candidates no other one dominates on (quality, fewer parameters)."""
    return _front(points, lambda p: None if p.params is None else -p.params, higher_is_better)


def speed_front(points: Sequence[Point], higher_is_better: bool) -> list[str]:
    """Keys of the candidates no other one dominates on (quality, higher speed-up)."""
    return _front(points, lambda p: p.speedup, higher_is_better)


def meets_constraints(p: Point, max_params: int | None, min_speedup: float | None) -> bool | None:
    """True/False when decidable; None while a figure a constraint needs is missing."""
    if p.quality is None:
        return None
    if max_params is not None:
        if p.params is None:
            return None
        if p.params > max_params:
            return False
    if min_speedup is not None:
        if p.speedup is None:
            return None
        if p.speedup < min_speedup:
            return False
    return True


@dataclass(frozen=True)
class Recommendation:
    key: str
    reason: str


def recommend(points: Sequence[Point], higher_is_better: bool, quality_name: str, *, max_params: int | None,
              min_speedup: float | None, base_params: int | None = None,
              labels: dict[str, str] | None = None) -> Recommendation | None:
    """The rule in the module doc, with its figures in one sentence."""
    front = set(params_front(points, higher_is_better))
    eligible = [p for p in points if p.key in front and meets_constraints(p, max_params, min_speedup)]
    if not eligible:
        return None
    best = eligible[0]
    for p in eligible[1:]:
        assert p.quality is not None and best.quality is not None and p.params is not None and best.params is not None
        if _better(p.quality, best.quality, higher_is_better) or (p.quality == best.quality and p.params < best.params):
            best = p
    assert best.quality is not None and best.params is not None
    name = (labels or {}).get(best.key, best.key)
    kept = f" ({best.params / base_params:.0%} of the base model's)" if base_params else ""
    limits = []
    if max_params is not None:
        limits.append(f"at most {max_params:,} parameters")
    if min_speedup is not None:
        limits.append(f"a speed-up of at least {min_speedup:g}x")
    among = (f"meeting {' and '.join(limits)}" if limits else "with no constraints given")
    speed = f", {best.speedup:.2f}x speed-up" if best.speedup is not None else ""
    reason = (f"{name} has the best {quality_name} ({best.quality:.4g}) of the {len(eligible)} candidate(s) on the "
              f"quality-vs-parameters front {among}, with {best.params:,} parameters{kept}{speed}.")
    return Recommendation(best.key, reason)
