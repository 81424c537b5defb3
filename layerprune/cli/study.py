"""``layerprune study SPEC [--wait]`` and ``layerprune studies list|show|cancel``.

``--wait`` prints one line whenever a candidate changes state (``[3/6] taylor · 25%: succeeded``)
and, at the end, the table of every candidate with its figures, the Pareto fronts marked
(``P``: quality vs parameters, ``S``: quality vs speed-up) and the recommendation.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from layerprune.cli.render import table
from layerprune.client import LayerPruneClient, Study, StudyFailed


def add_parsers(sub: Any, add_server_options: Any) -> None:
    p = sub.add_parser("study", help="compare pruning recipes: create a study from a JSON or YAML file")
    p.add_argument("spec", help="study file (.json, .yaml, .yml) or - for stdin (JSON)")
    p.add_argument("--wait", action="store_true", help="follow every candidate until the study ends, then "
                                                       "print the table with the Pareto front")
    p.add_argument("--idempotency-key", default=None, help="reuse to make resubmission safe (default: random)")
    add_server_options(p)
    p = sub.add_parser("studies", help="list, show or cancel studies")
    ssub = p.add_subparsers(dest="studies_command", required=True, metavar="ACTION")
    sp = ssub.add_parser("list", help="list studies, newest first")
    sp.add_argument("--limit", type=int, default=20)
    add_server_options(sp)
    sp = ssub.add_parser("show", help="one study: its candidates, fronts and recommendation")
    sp.add_argument("study_id")
    add_server_options(sp)
    sp = ssub.add_parser("cancel", help="cancel every unfinished candidate of a study")
    sp.add_argument("study_id")
    add_server_options(sp)


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def study_table(study: dict[str, Any]) -> str:
    base = study.get("baseline") or {}
    rec = (study.get("recommendation") or {}).get("job_id")
    quality = (study.get("quality") or {}).get("name", "quality")
    rows = [["", "baseline", base.get("status"), _fmt(base.get("params"), ","),
             _fmt((base.get("results") or {}).get("perplexity"), ".3f"),
             _fmt((base.get("results") or {}).get("mean_acc"), ".3f"), "1.00", "", base.get("job_id")]]
    for c in study.get("candidates", []):
        r = c.get("results") or {}
        marks = ("P" if c["pareto"]["params"] else "") + ("S" if c["pareto"]["speed"] else "")
        flag = "*" if c["job_id"] == rec else ""
        ok = {True: "yes", False: "no", None: "?"}[c.get("meets_constraints")]
        rows.append([flag, c["label"], c.get("status"), _fmt(r.get("params"), ","), _fmt(r.get("perplexity"), ".3f"),
                     _fmt(r.get("mean_acc"), ".3f"), _fmt(r.get("speedup"), ".2f"), f"{marks:2} {ok}",
                     c["job_id"]])
    out = table(["", "recipe", "status", "params", "perplexity", "mean_acc", "speedup", "front ok", "job"], rows,
                align="llrrrrrll")
    legend = (f"front: P = Pareto front of {quality} vs parameters, S = of {quality} vs speed-up; "
              "ok = meets the constraints; * = recommended")
    lines = [out, legend]
    recommendation = study.get("recommendation")
    lines.append(f"recommended: {recommendation['reason']}" if recommendation else "recommended: none (no candidate "
                 "on the front meets the constraints yet)")
    return "\n".join(lines)


def _header(study: Study) -> str:
    return f"{study.id}  {study.status}  {study.done}/{study.total} candidates done"


def cmd_study(client: LayerPruneClient, args: argparse.Namespace, load_spec: Callable[[str], dict[str, Any]]) -> str:
    """Returns the outcome ("ok", "failed", "cancelled"); ``cli.remote`` turns it into the exit code
    (this module imports neither it nor ``layerprune.cli``: no import cycle)."""
    spec = load_spec(args.spec)
    study = client.create_study(spec, idempotency_key=args.idempotency_key)
    if not args.wait:
        if args.json:
            print(json.dumps(study.raw, indent=2))
        else:
            print(_header(study))
        return "ok"
    print(f"{study.id}: {study.total} candidates + the baseline, queued", file=sys.stderr)
    seen: dict[str, str] = {}

    def on_progress(s: Study) -> None:
        rows = [("baseline", s.baseline.get("job_id"), s.baseline.get("status"))]
        rows += [(c["label"], c["job_id"], c["status"]) for c in s.candidates]
        for label, job_id, status in rows:
            if job_id and seen.get(job_id) != status:
                seen[job_id] = status
                print(f"[{s.done}/{s.total}] {label}: {status}", file=sys.stderr, flush=True)

    try:
        study = client.wait_study(study.id, on_progress=on_progress)
        code = "ok"
    except StudyFailed as exc:
        study, code = exc.study, "cancelled" if exc.study.status == "cancelled" else "failed"
    print(json.dumps(study.raw, indent=2) if args.json else _header(study) + "\n" + study_table(study.raw))
    return code


def cmd_studies(client: LayerPruneClient, args: argparse.Namespace) -> str:
    if args.studies_command == "list":
        page = client.list_studies(limit=args.limit)
        if args.json:
            print(json.dumps([s.raw for s in page.data], indent=2))
            return "ok"
        rows = [[s.id, s.status, f"{s.done}/{s.total}", s.raw.get("model"), s.raw.get("created_at")] for s in page.data]
        print(table(["id", "status", "done", "model", "created"], rows))
        return "ok"
    if args.studies_command == "show":
        study = client.get_study(args.study_id)
    else:
        study = client.cancel_study(args.study_id)
    print(json.dumps(study.raw, indent=2) if args.json else _header(study) + "\n" + study_table(study.raw))
    return "ok"
