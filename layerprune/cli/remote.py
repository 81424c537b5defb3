"""CLI commands that talk to a running server through :class:`LayerPruneClient`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

from layerprune.cli import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE
from layerprune.cli.follow import follow
from layerprune.cli.progress import ProgressView
from layerprune.cli.render import human_bytes, jobs_table, summary_table, table
from layerprune.cli.study import cmd_studies as run_studies
from layerprune.cli.study import cmd_study as run_study
from layerprune.client import Artifact, Job, LayerPruneAPIError, LayerPruneClient, LayerPruneError


class UsageError(Exception):
    """Bad input on the command line or in a spec file (exit 2)."""


def _err(text: str) -> None:
    print(f"error: {text}", file=sys.stderr)


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} wants KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def load_spec(path: str) -> dict[str, Any]:
    """A job spec from a .json/.yaml/.yml file ('-': JSON on stdin)."""
    try:
        if path == "-":
            text, suffix = sys.stdin.read(), ".json"
        else:
            text, suffix = Path(path).read_text(encoding="utf-8"), Path(path).suffix.lower()
    except OSError as exc:
        raise UsageError(f"cannot read spec {path}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text) if suffix in (".yaml", ".yml") else json.loads(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise UsageError(
            f"{path} is not valid {'YAML' if suffix in ('.yaml', '.yml') else 'JSON'}: {exc}"
        ) from exc
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a job spec is a mapping (JSON object), not {type(data).__name__}")
    return data


def _client(args: argparse.Namespace) -> LayerPruneClient:
    return LayerPruneClient(args.url, args.api_key, max_retries=2)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _print_job(job: Job) -> None:
    print(f"job       {job.id}")
    print(
        f"status    {job.status}" + (f" (stage {job.stage}, {100 * job.progress:.0f}%)" if job.stage else "")
    )
    print(f"model     {job.spec.get('model', '-')}")
    stages = [s for s in ("prune", "finetune", "evaluate") if job.spec.get(s)]
    print(f"stages    {' → '.join(stages) or '-'}")
    print(
        f"created   {job.created_at or '-'}   started {job.started_at or '-'}   finished {job.finished_at or '-'}"
    )
    if job.attempts:
        print(f"attempts  {job.attempts}")
    if job.metadata:
        print("metadata  " + ", ".join(f"{k}={v}" for k, v in job.metadata.items()))
    if job.error:
        print(f"error     {job.error.get('code')}: {job.error.get('message')}")


def _finish(client: LayerPruneClient, job: Job, as_json: bool) -> int:
    """Print a terminal job's outcome; the exit code follows its status."""
    if as_json:
        _print_json(job.raw)
    elif job.status == "succeeded":
        print(f"\njob {job.id} succeeded")
        if job.result:
            artifacts = [a.raw for a in client.artifacts(job.id)]
            print(summary_table(job.result, artifacts))
        print(f"\ndownload it with: layerprune download {job.id} ./{job.id}")
    else:
        err = job.error or {}
        print(
            f"\njob {job.id} {job.status}" + (f": {err.get('code')}: {err.get('message')}" if err else ""),
            file=sys.stderr,
        )
    if job.status == "succeeded":
        return EXIT_OK
    return EXIT_CANCELLED if job.status == "cancelled" else EXIT_FAILED


def cmd_submit(client: LayerPruneClient, args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    extra = _pairs(args.metadata, "--metadata")
    if extra:
        spec["metadata"] = {**(spec.get("metadata") or {}), **extra}
    job = client.create_job(spec, idempotency_key=args.idempotency_key)
    if not args.wait:
        if args.json:
            _print_json(job.raw)
        else:
            print(f"created {job.id} ({job.status})")
            print(f"follow it with: layerprune jobs show {job.id}")
        return EXIT_OK
    if not args.json:
        print(f"created {job.id}; following its progress (Ctrl-C stops watching, not the job)")
    view = ProgressView(sys.stderr if args.json else sys.stdout)
    try:
        job = follow(client, job.id, view)
    finally:
        view.close()
    return _finish(client, job, args.json)


def cmd_jobs(client: LayerPruneClient, args: argparse.Namespace) -> int:
    if args.jobs_command == "list":
        metadata = _pairs(args.metadata, "--metadata")
        if args.limit == 0:
            jobs = list(client.iter_jobs(status=args.status, metadata=metadata))
            has_more = False
        else:
            if not 1 <= args.limit <= 100:
                raise UsageError("--limit must be 0 (all) or between 1 and 100")
            page = client.list_jobs(status=args.status, metadata=metadata, limit=args.limit)
            jobs, has_more = page.data, page.has_more
        if args.json:
            _print_json([j.raw for j in jobs])
        elif not jobs:
            print("no jobs")
        else:
            print(jobs_table(j.raw for j in jobs))
            if has_more:
                print("(more: --limit 0 lists all)")
        return EXIT_OK
    if args.jobs_command == "show":
        job = client.get_job(args.job_id)
        if args.json:
            _print_json(job.raw)
            return EXIT_OK
        _print_job(job)
        if job.status == "succeeded" and job.result:
            print()
            print(summary_table(job.result, [a.raw for a in client.artifacts(job.id)]))
        if args.events > 0:
            events = client.events(job.id)[-args.events :]
            if events:
                print("\nrecent events:")
                for ev in events:
                    print(f"  {ev.created_at or '':<27} {ev.level:<7} {ev.type:<12} {ev.message}")
        return EXIT_OK
    # cancel
    job = client.cancel_job(args.job_id)
    if args.wait and not job.is_terminal:
        try:
            job = client.wait(job.id, poll_interval=1.0)
        except LayerPruneError:
            job = client.get_job(job.id)
    if args.json:
        _print_json(job.raw)
    else:
        print(f"{job.id} {job.status}")
    return EXIT_OK


def cmd_download(client: LayerPruneClient, args: argparse.Namespace) -> int:
    job = client.get_job(args.job_id)
    if job.status != "succeeded":
        _err(f"job {job.id} is {job.status}; only a succeeded job has a model to download")
        return EXIT_FAILED
    shown: dict[str, int] = {}

    def on_file(art: Artifact, done: int) -> None:
        # One line per file on a log; a running counter on a terminal.
        if sys.stdout.isatty():
            print(
                f"\r  {art.path:<40} {human_bytes(done):>10} / {human_bytes(art.size_bytes)}",
                end="",
                flush=True,
            )
        shown[art.path] = done

    paths = client.download(job.id, args.dest_dir, resume=not args.no_resume, on_file=on_file)
    if sys.stdout.isatty() and shown:
        print()
    total = sum(p.stat().st_size for p in paths)
    if args.json:
        _print_json(
            {
                "job_id": job.id,
                "dest_dir": str(Path(args.dest_dir).resolve()),
                "files": [str(p) for p in paths],
            }
        )
    else:
        print(
            f"downloaded {len(paths)} files ({human_bytes(total)}) to {Path(args.dest_dir).resolve()}; sha256 verified"
        )
    return EXIT_OK


def cmd_files(client: LayerPruneClient, args: argparse.Namespace) -> int:
    if args.files_command == "upload":
        if not Path(args.path).is_file():
            raise UsageError(f"no such file: {args.path}")
        f = client.upload_file(args.path, args.purpose, format=args.format)
        if args.json:
            _print_json(f.raw)
        else:
            records = f" · {f.num_records} records" if f.num_records is not None else ""
            fits = f"  formats={','.join(f.formats)}" if f.formats else ""
            print(f"uploaded {f.id}  {f.filename}  {human_bytes(f.size_bytes)}{records}  purpose={f.purpose}{fits}")
        return EXIT_OK
    if args.files_command == "list":
        page = client.list_files(limit=100)
        if args.json:
            _print_json([f.raw for f in page.data])
        else:
            rows = [
                [f.id, f.filename, human_bytes(f.size_bytes), f.purpose, f.num_records, f.created_at]
                for f in page.data
            ]
            print(
                table(["ID", "FILENAME", "SIZE", "PURPOSE", "RECORDS", "CREATED"], rows, "llrlrl")
                if rows
                else "no files"
            )
        return EXIT_OK
    client.delete_file(args.file_id)
    print(f"deleted {args.file_id}")
    return EXIT_OK


_OUTCOMES = {"ok": EXIT_OK, "failed": EXIT_FAILED, "cancelled": EXIT_CANCELLED}


def cmd_study(client: LayerPruneClient, args: argparse.Namespace) -> int:
    return _OUTCOMES[run_study(client, args, load_spec)]


def cmd_studies(client: LayerPruneClient, args: argparse.Namespace) -> int:
    return _OUTCOMES[run_studies(client, args)]


_COMMANDS = {"submit": cmd_submit, "jobs": cmd_jobs, "download": cmd_download, "files": cmd_files,
             "study": cmd_study, "studies": cmd_studies}


def run(args: argparse.Namespace) -> int:
    try:
        with _client(args) as client:
            return _COMMANDS[args.command](client, args)
    except UsageError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except LayerPruneAPIError as exc:
        _err(f"{exc.message} [{exc.status} {exc.code}" + (f", param {exc.param}" if exc.param else "") + "]")
        # A spec the server refused is the caller's input to fix, like a usage error.
        return EXIT_USAGE if exc.status in (413, 422) else EXIT_FAILED
    except httpx.TransportError as exc:
        _err(f"cannot reach the server at {args.url}: {exc}")
        return EXIT_UNREACHABLE
    except LayerPruneError as exc:
        _err(str(exc))
        return EXIT_FAILED
