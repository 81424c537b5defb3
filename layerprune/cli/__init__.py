"""The ``layerprune`` command: run the service's processes and talk to a running server.

    layerprune serve [--host H] [--port P]       API (migrates first)
    layerprune worker [--queues gpu,cpu]         Celery worker
    layerprune migrate                           database to the newest schema
    layerprune keys create TENANT                a new API key, printed once
    layerprune submit SPEC.json|yaml [--wait]    create a job (live progress with --wait)
    layerprune jobs list|show|cancel             inspect and cancel jobs
    layerprune study SPEC.yaml [--wait]          compare pruning recipes (a study), with the Pareto front
    layerprune studies list|show|cancel          inspect and cancel studies
    layerprune download JOB DIR                  verified, resumable download of a job's model
    layerprune files upload PATH --purpose P [--format F]  upload a data file
    layerprune demo                              the paper's recipe on the bundled model, end to end

Commands that talk to a server take ``--url``/``--api-key`` or LAYERPRUNE_URL/LAYERPRUNE_API_KEY.
Exit codes: 0 success; 1 the job failed or the server refused the request; 2 bad usage or a spec
the server refused as invalid (422/413); 3 server unreachable; 4 the job was cancelled; 130 interrupted;
141 the reader of the output went away (``layerprune jobs show J | head``: quietly, as ``yes | head``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from layerprune.cli.demo import add_demo_arguments, run_demo
from layerprune.cli.study import add_parsers as add_study_parsers

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_CANCELLED = 4
EXIT_INTERRUPTED = 130
# 128 + SIGPIPE: the status a shell reports for a tool killed by writing to a closed pipe.
EXIT_BROKEN_PIPE = 141


def _add_server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url",
        default=os.environ.get("LAYERPRUNE_URL", "http://127.0.0.1:8000"),
        help="server base URL (env LAYERPRUNE_URL; default %(default)s)",
    )
    p.add_argument(
        "--api-key", default=os.environ.get("LAYERPRUNE_API_KEY"), help="API key (env LAYERPRUNE_API_KEY)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layerprune",
        description="Prune decoder layers of Hugging Face LLMs, heal and evaluate them, as jobs.",
        epilog="Exit codes: 0 ok, 1 failed, 2 usage, 3 server unreachable, 4 cancelled.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the API server (applies migrations first)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--no-migrate", action="store_true", help="do not migrate at start (LAYERPRUNE_AUTO_MIGRATE=0 for this process)")
    p.add_argument("--log-level", default=None, help="uvicorn log level (default: LAYERPRUNE_LOG_LEVEL)")

    p = sub.add_parser("worker", help="run a Celery worker that executes jobs")
    p.add_argument(
        "--queues", default=None, help="comma-separated queues (default: LAYERPRUNE_WORKER_QUEUES)"
    )
    p.add_argument("extra", nargs=argparse.REMAINDER, help="further options passed to the worker")

    sub.add_parser("migrate", help="bring the database (LAYERPRUNE_DATABASE_URL) to the newest schema")

    p = sub.add_parser("keys", help="manage API keys (talks to the database directly)")
    ksub = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    kp = ksub.add_parser("create", help="create a key for TENANT and print it once")
    kp.add_argument("tenant")
    kp.add_argument("--name", default=None, help="a label for the key")

    p = sub.add_parser("submit", help="create a job from a JSON or YAML spec file")
    p.add_argument("spec", help="spec file (.json, .yaml, .yml) or - for stdin (JSON)")
    p.add_argument("--wait", action="store_true", help="follow the job with a progress bar until it ends")
    p.add_argument(
        "--metadata", action="append", default=[], metavar="KEY=VALUE", help="add a metadata entry"
    )
    p.add_argument(
        "--idempotency-key", default=None, help="reuse to make resubmission safe (default: random)"
    )
    _add_server_options(p)

    p = sub.add_parser("jobs", help="list, show or cancel jobs")
    jsub = p.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    jp = jsub.add_parser("list", help="list jobs, newest first")
    jp.add_argument("--status", default=None)
    jp.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE")
    jp.add_argument("--limit", type=int, default=20, help="how many (default %(default)s; 0 = all)")
    _add_server_options(jp)
    jp = jsub.add_parser("show", help="one job, its result and recent events")
    jp.add_argument("job_id")
    jp.add_argument("--events", type=int, default=10, help="how many recent events to show")
    _add_server_options(jp)
    jp = jsub.add_parser("cancel", help="cancel a job")
    jp.add_argument("job_id")
    jp.add_argument("--wait", action="store_true", help="wait until it is cancelled")
    _add_server_options(jp)

    add_study_parsers(sub, _add_server_options)

    p = sub.add_parser("download", help="download a finished job's model (resumable, sha256-verified)")
    p.add_argument("job_id")
    p.add_argument("dest_dir")
    p.add_argument("--no-resume", action="store_true", help="start partial files over")
    _add_server_options(p)

    p = sub.add_parser("files", help="upload, list or delete data files")
    fsub = p.add_subparsers(dest="files_command", required=True, metavar="ACTION")
    fp = fsub.add_parser("upload", help="upload a JSONL or text file")
    fp.add_argument("path")
    fp.add_argument("--purpose", required=True, choices=["finetune", "evaluate", "calibration"])
    # No choices here: the server knows its formats and names the field when it refuses one.
    fp.add_argument("--format", dest="format", default=None,
                    help="finetune only: refuse the file unless every record fits this fine-tuning format "
                         "(a finetune.format name); default: any one format the purpose allows")
    _add_server_options(fp)
    fp = fsub.add_parser("list", help="list uploaded files")
    _add_server_options(fp)
    fp = fsub.add_parser("delete", help="delete an uploaded file")
    fp.add_argument("file_id")
    _add_server_options(fp)

    p = sub.add_parser(
        "demo",
        help="start an API and a worker on the embedded default, run the paper's recipe on the bundled model",
        description="Start the API and a worker on the embedded default (SQLite + filesystem broker), "
        "prune 25% of the bundled SmolLM2-135M's layers in reverse order, heal the final norm and the "
        "last 3 layers on the bundled instructions (--train-lm-head: lm_head too, as the paper does), "
        "evaluate base and result, and print a before/after table.",
    )
    add_demo_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        # Flushed here, so that a closed pipe shows up inside this try and not at interpreter exit.
        code = _run(argv)
        sys.stdout.flush()
        return code
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader (``| head``) has gone: stop quietly. Python's own flush of stdout at exit
        # would fail again and print a traceback, so stdout is pointed at /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)  # --help prints: inside main's try too
    if args.command in ("serve", "worker", "migrate", "keys"):
        from layerprune.cli import local  # noqa: PLC0415 - cycle (it reads our exit codes); SQLAlchemy for these commands only

        return local.run(args)
    if args.command == "demo":
        return run_demo(args)
    from layerprune.cli import remote  # noqa: PLC0415 - cycle: cli.remote reads our exit codes

    return remote.run(args)


if __name__ == "__main__":
    sys.exit(main())
