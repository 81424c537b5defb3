"""Answer extraction and exact-match scoring of generated text, as lm-evaluation-harness 0.4 does it.

* :func:`regex_extract` is lm-eval's ``regex`` filter (``filters/extraction.py::RegexFilter``):
  ``re.findall``; the ``group_select``-th match (negative counts from the end); when the pattern has
  several groups the match is a tuple and its first non-empty group is taken; stripped; no match →
  ``"[invalid]"``.
* :func:`strip_whitespace` is its ``remove_whitespace`` filter (``str.strip``).
* :func:`exact_match` is ``api/metrics.py::exact_match_hf_evaluate`` for one prediction against one
  or more references (lm-eval's multiple-target rule: 1 when any reference matches). The steps and
  their order are lm-eval's: every ``regexes_to_ignore`` pattern removed from both sides, then
  lower-casing, then ``string.punctuation`` removed, then equality. numpy's string arrays are used
  as lm-eval uses them, so even their corner cases (trailing NULs dropped) agree.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

import numpy as np

FALLBACK = "[invalid]"


def regex_extract(text: str, pattern: str, group_select: int = 0, fallback: str = FALLBACK) -> str:
    matches = re.findall(pattern, text)
    if not matches:
        return fallback
    match = matches[group_select]
    if isinstance(match, tuple):
        found = [m for m in match if m]
        match = found[0] if found else fallback
    return match.strip()


def strip_whitespace(text: str) -> str:
    return text.strip()


def exact_match(
    prediction: str,
    references: Sequence[str],
    *,
    regexes_to_ignore: Sequence[str] = (),
    ignore_case: bool = False,
    ignore_punctuation: bool = False,
) -> float:
    """1.0 when the prediction equals any reference after lm-eval's normalisation, else 0.0."""
    if not references:
        return 0.0
    preds = [prediction] * len(references)
    refs = list(references)
    for pattern in regexes_to_ignore:
        preds = [re.sub(pattern, "", x) for x in preds]
        refs = [re.sub(pattern, "", x) for x in refs]
    p, r = np.asarray(preds), np.asarray(refs)
    if ignore_case:
        p, r = np.char.lower(p), np.char.lower(r)
    if ignore_punctuation:
        table = str.maketrans("", "", string.punctuation)
        p, r = np.char.translate(p, table=table), np.char.translate(r, table=table)
    return 1.0 if float(np.mean(p == r)) > 0.0 else 0.0
