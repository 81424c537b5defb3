"""Finish the output model directory: file manifest, model card and provenance record.

The directory is a plain Hugging Face model (safetensors only, as the prune and heal stages wrote it)
plus ``layerprune.json`` (what was done, to what, with which data and library versions) and a
``README.md`` model card whose YAML front matter carries the base model and its licence.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import yaml

from layerprune.core import units
from layerprune.core.evaluate.report import sample_pairs, speed_rows
from layerprune.core.sources import sha256_file
from layerprune.core.units import human_bytes

RECORD_NAME = "layerprune.json"
CARD_NAME = "README.md"

__all__ = ["sha256_file", "dir_manifest", "library_versions", "write_model_card_and_record",
           "RECORD_NAME", "CARD_NAME"]


def dir_manifest(out_dir: Path) -> list[dict[str, Any]]:
    """``[{path, size_bytes, sha256}]`` of every file under ``out_dir`` (relative posix paths, sorted)."""
    out_dir = Path(out_dir)
    items = []
    for path in sorted(out_dir.rglob("*")):
        rel = path.relative_to(out_dir)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            items.append({"path": rel.as_posix(), "size_bytes": path.stat().st_size, "sha256": sha256_file(path)})
    return items


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "safetensors", "accelerate", "peft", "layerprune"):
        try:
            out[dist] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            continue
    return out


def _fmt(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.6g}"
    return str(x)


def _part(record: Mapping[str, Any], key: str) -> Any:
    # The pipeline nests stage results under "result"; a direct key wins.
    value = record.get(key)
    if value is None and isinstance(record.get("result"), Mapping):
        value = record["result"].get(key)
    return value


def _front_matter(record: Mapping[str, Any]) -> str:
    base = record.get("base_model") or {}
    meta: dict[str, Any] = {}
    hub_id = base.get("ref") if base.get("kind") == "hub" else base.get("upstream") or None
    if hub_id:
        meta["base_model"] = hub_id
    elif base.get("ref"):
        meta["base_model"] = str(base["ref"])
    if base.get("license"):
        meta["license"] = base["license"]
    meta["library_name"] = "transformers"
    meta["pipeline_tag"] = "text-generation"
    meta["tags"] = ["layerprune", "layer-pruning", "pruned"]
    prune = _part(record, "prune") or {}
    if prune.get("metric"):
        meta["tags"].append(f"prune-{prune['metric']}")
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def _card_body(record: Mapping[str, Any]) -> str:
    base = record.get("base_model") or {}
    prune = _part(record, "prune") or {}
    lines = [f"# Layer-pruned {base.get('ref', 'model')}", ""]
    if prune:
        removed = prune.get("removed_layers") or []
        lines += [
            f"Decoder layers removed with layerprune: {prune.get('num_layers_before')} → "
            f"{prune.get('num_layers_after')} layers ({len(removed)} removed: {removed}, original numbering).",
            "",
            f"- Selection metric: `{prune.get('metric')}` (semantics: {prune.get('semantics', 'paper')})",
            f"- Parameters: {_fmt(prune.get('params_before'))} before, {_fmt(prune.get('params_after'))} after",
        ]
        if record.get("size_bytes_before") and record.get("size_bytes_after"):
            # The same rule as the CLI's and the dashboard's sizes (core.units).
            lines.append(f"- Weights on disk: {human_bytes(record['size_bytes_before'])} before, "
                         f"{human_bytes(record['size_bytes_after'])} after")
        rounds = prune.get("rounds") or []
        if len(rounds) > 1:
            lines.append(f"- Iterative: {len(rounds)} rounds, "
                         + "; ".join(f"round {r.get('round')}: {r.get('removed')}" for r in rounds))
        cal = prune.get("calibration")
        if cal:
            lines.append(f"- Calibration: {cal.get('dataset')}, {cal.get('num_samples')} samples × "
                         f"{cal.get('seq_len')} tokens, seed {cal.get('seed')} (token ids sha256 {cal.get('sha256')})")
        rep = prune.get("replacement")
        if rep:
            lines.append(f"- Removed runs replaced by a linear map folded into the block before each "
                         f"(objective `{rep.get('objective')}`, ridge {_fmt(rep.get('ridge'))}):")
            for run in rep.get("runs") or []:
                lines.append(f"  - layers {run.get('layers')} → `{run.get('folded_into')}`: mean cosine with the "
                             f"removed run's output {_fmt(run.get('cosine_removed'))} removed, {_fmt(run.get('cosine'))} "
                             f"replaced ({run.get('chosen')}); relative residual {_fmt(run.get('residual_removed'))} → "
                             f"{_fmt(run.get('residual'))} on {run.get('tokens')} tokens")
        why = {
            "reverse_order": "the last layers are removed (Lu et al. 2024: reverse order is a strong, free baseline)",
            "random": "layers drawn at random with the seed",
            "manual": "layers named by the user",
        }.get(str(prune.get("metric")), "the layers with the lowest importance scores are removed")
        lines += [f"- Why: {why}", ""]
        scores = prune.get("layer_scores") or []
        if any(s is not None for s in scores):
            removed_set = set(removed)
            lines += ["| layer | score | removed |", "|---:|---:|:---:|"]
            for i, s in enumerate(scores):
                lines.append(f"| {i} | {_fmt(s)} | {'yes' if i in removed_set else ''} |")
            lines.append("")
    finetune = _part(record, "finetune")
    if finetune:
        lines += ["## Healing", "", "```json", json.dumps(finetune, indent=2, default=str)[:4000], "```", ""]
    metrics = _part(record, "metrics")
    if metrics:
        lines += ["## Evaluation", ""] + _task_table(metrics) + _speed_table(metrics) + _samples(metrics) + ["```json", json.dumps(metrics, indent=2, default=str)[:4000], "```", ""]
    lines += ["## Provenance", "",
              f"Base model `{base.get('ref')}` (revision {base.get('revision')}); sha256 of every input file, the "
              f"spec, scores, calibration data and library versions are in `{RECORD_NAME}`.", ""]
    return "\n".join(lines)


def _task_table(metrics: Mapping[str, Any]) -> list[str]:
    """One row per task metric: before, after, change and which way is better (lm-eval's names)."""
    after = metrics.get("after") if isinstance(metrics.get("after"), Mapping) else None
    before = metrics.get("before") if isinstance(metrics.get("before"), Mapping) else {}
    tasks = (after or {}).get("tasks") or {}
    if not tasks:
        return []
    # Figures and changes as the CLI and the dashboard write them (core.units).
    rows = ["| task | metric | better | before | after | change | n |", "|---|---|:---:|---:|---:|---:|---:|"]
    for task, res in tasks.items():
        if not isinstance(res, Mapping):
            continue
        prior = ((before or {}).get("tasks") or {}).get(task) or {}
        for metric, higher in (res.get("higher_is_better") or {"acc": True, "acc_norm": True}).items():
            a, b = res.get(metric), prior.get(metric)
            if a is None:
                continue
            fmt = units.field(metric)["format"]
            change = units.format_change(fmt, b, a) if isinstance(b, int | float) else ""
            err = units.stderr_key(metric)
            rows.append(f"| {units.TASK_LABELS.get(task, task)} | {units.metric_label(metric)} | "
                        f"{'higher' if higher else 'lower'} | {_stat(fmt, b, prior.get(err))} | "
                        f"{_stat(fmt, a, res.get(err))} | {change} | {res.get('n', '')} |")
    return rows + [""]


def _stat(fmt: str, value: Any, stderr: Any) -> str:
    """``0.520 ± 0.100`` (the standard error in the value's format), ``–`` when missing."""
    if not isinstance(value, int | float):
        return "–"
    text = units.format_value(fmt, value)
    return text + (f" ± {units.format_value(fmt, stderr)}" if isinstance(stderr, int | float) else "")


def _speed_table(metrics: Mapping[str, Any]) -> list[str]:
    """Measured prefill/decode tokens/s before and after, and the speed-up (after / before)."""
    rows = speed_rows(dict(metrics))
    if not rows:
        return []
    after = (metrics.get("after") or {}).get("speed") or (metrics.get("before") or {}).get("speed") or {}
    cfg = after.get("settings") or {}
    out = ["| speed (higher is better) | before | after | speed-up |", "|---|---:|---:|---:|"]
    for label, b, a, ratio in rows:
        out.append(f"| {label} | {_tok_s(b)} | {_tok_s(a)} | {units.format_value('ratio', ratio) if ratio is not None else ''} |")
    return out + ["", f"Speed measured on {after.get('device')} ({after.get('dtype')}, {after.get('threads')} threads): "
                  f"{cfg.get('prompt_tokens')}-token prompts, {cfg.get('new_tokens')} greedy new tokens, median of "
                  f"{cfg.get('repeats')} runs after {cfg.get('warmup')} warm-up"
                  f"{', before and after interleaved' if cfg.get('interleaved') else ''}.", ""]


def _samples(metrics: Mapping[str, Any]) -> list[str]:
    """The greedy answers to the job's fixed prompts (evaluate.samples), before and after."""
    out: list[str] = []
    for prompt, before, after in sample_pairs(dict(metrics)):
        out += [f"**Prompt:** {prompt}", ""]
        if before is not None:
            out += ["Before:", "", "> " + before.replace("\n", "\n> "), ""]
        out += ["After:", "", "> " + after.replace("\n", "\n> "), ""]
    return out


def _tok_s(x: Any) -> str:
    return units.format_value("rate", x) if isinstance(x, int | float) else "–"


def write_model_card_and_record(out_dir: Path, record: dict[str, Any]) -> None:
    """Write ``layerprune.json`` (the record as given) and a ``README.md`` model card from it.

    Expected keys (all optional): ``base_model`` {ref, revision, kind, license, files, upstream},
    ``spec``, ``prune`` (a PruneResult dict), ``finetune``, ``metrics``, ``library_versions``,
    ``seed``, ``timings``. ``library_versions`` is filled in when absent.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = dict(record)
    record.setdefault("library_versions", library_versions())
    (out_dir / RECORD_NAME).write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    (out_dir / CARD_NAME).write_text(_front_matter(record) + "\n" + _card_body(record), encoding="utf-8")
