"""``layerprune demo``: the whole product on one machine, with nothing installed but Python packages.

It starts the API and one worker as subprocesses on the embedded default (SQLite and the
filesystem Celery transport under a fresh data directory), submits the paper's recipe on the
bundled SmolLM2-135M-Instruct through the HTTP API — reverse-order removal of 25% of the layers,
partial healing of lm_head + final norm + the last 3 layers on the bundled Alpaca-format
instructions, evaluation of base and result — follows it with a live progress bar, downloads the
model (sha256-verified) and prints a before/after table. Both processes are stopped at the end.

The healing step count and the evaluation limit are capped so the job fits in minutes on two CPU
cores; the paper's full recipe (2 epochs at batch 64, no limit) is one spec file away
(examples/paper-recipe.yaml).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_TASKS = ("arc_easy", "piqa", "hellaswag")
# Sized for two CPU cores (README: measured there): the job stays well under ten minutes.
DEMO_DEFAULTS = {"max_steps": 20, "batch_size": 4, "learning_rate": 5e-4, "limit": 25, "ppl_windows": 16}
# The options that size the job: (demo_spec keyword, type, help); their defaults are DEMO_DEFAULTS.
_SIZE_OPTIONS = (
    ("max_steps", int, "healing optimizer steps"),
    ("batch_size", int, "healing batch size"),
    ("learning_rate", float, "healing learning rate"),
    ("limit", int, "examples per evaluation task"),
    ("ppl_windows", int, "perplexity windows of 256 tokens"),
)


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        default=".lp-data/demo",
        help="where the demo keeps its database, queue and "
        "artifacts (emptied first unless --keep-data; default %(default)s)",
    )
    p.add_argument("--keep-data", action="store_true", help="do not empty --data-dir first")
    p.add_argument("--port", type=int, default=0, help="API port (default: a free one)")
    for key, kind, text in _SIZE_OPTIONS:
        p.add_argument("--" + key.replace("_", "-"), type=kind, default=DEMO_DEFAULTS[key],
                       help=f"{text} (default %(default)s)")
    p.add_argument(
        "--train-lm-head",
        action="store_true",
        help="heal lm_head too, as the paper does; SmolLM2 ties it to the embeddings, so this "
        "unties them and adds 28M parameters",
    )
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help="evaluation tasks (default %(default)s)")
    p.add_argument("--print-spec", action="store_true", help="print the job spec the demo submits and exit")


def demo_spec(
    *,
    max_steps: int = DEMO_DEFAULTS["max_steps"],
    batch_size: int = DEMO_DEFAULTS["batch_size"],
    learning_rate: float = DEMO_DEFAULTS["learning_rate"],
    limit: int = DEMO_DEFAULTS["limit"],
    ppl_windows: int = DEMO_DEFAULTS["ppl_windows"],
    tasks: tuple[str, ...] | list[str] = DEFAULT_TASKS,
    train_lm_head: bool = False,
) -> dict[str, Any]:
    """The paper's recipe on the bundled model, capped to fit a laptop-sized run.

    One departure by default: SmolLM2 ties lm_head to its input embeddings, and healing lm_head
    would untie them and store a second 28M-parameter matrix, so the pruned model would end up
    larger than the original. The demo heals the final norm and the last 3 layers instead
    (``train_lm_head=True`` gives the paper's exact trainable set).
    """
    return {
        "model": "bundled:smollm2-135m-instruct",
        "prune": {"metric": "reverse_order", "ratio": 0.25},
        "finetune": {
            "method": "partial",
            "trainable_last_layers": 3,
            "train_lm_head": train_lm_head,
            "dataset": "bundled:instructions",
            "format": "alpaca",
            "max_steps": max_steps,
            "batch_size": batch_size,
            "micro_batch_size": min(4, batch_size),
            # The paper's 1e-5 over ~1,600 steps; twenty steps need a much larger rate to move.
            "learning_rate": learning_rate,
            "warmup_steps": max(1, max_steps // 10),
            "max_seq_len": 256,
            "seed": 42,
        },
        "evaluate": {
            "perplexity": {"dataset": "bundled:wikipedia-eval", "seq_len": 256, "max_windows": ppl_windows},
            "tasks": list(tasks),
            "limit": limit,
            "compare_base": True,
        },
        "metadata": {"source": "layerprune-demo"},
    }


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _child_env(data_dir: Path, api_key: str) -> dict[str, str]:
    env = dict(os.environ)
    # The embedded default, whatever this shell points at: no server is needed or touched.
    for name in (
        "LAYERPRUNE_DATABASE_URL",
        "LAYERPRUNE_BROKER_URL",
        "LAYERPRUNE_STORAGE_DIR",
        "LAYERPRUNE_STORAGE_URL",
    ):
        env.pop(name, None)
    env.update(
        LAYERPRUNE_DATA_DIR=str(data_dir),
        LAYERPRUNE_API_KEYS=f"demo:{api_key}",
        LAYERPRUNE_AUTO_MIGRATE="1",  # the demo's own fresh database: its processes create the schema
        LAYERPRUNE_LOG_JSON="false",
        LAYERPRUNE_WORKER_QUEUES="gpu,cpu",
        HF_HUB_OFFLINE=env.get("HF_HUB_OFFLINE", "1"),
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    return env


class _Process:
    """A child process whose output goes to a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.log = name, log
        self._fh = open(log, "wb")  # noqa: SIM115 - closed in stop()
        # A new session: a worker's own children (Celery's pool) are stopped with it.
        self.proc = subprocess.Popen(
            argv, env=env, stdout=self._fh, stderr=subprocess.STDOUT, start_new_session=True
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_seconds(self) -> float | None:
        """CPU time of the process and its finished children (Linux /proc), None elsewhere.

        A Celery worker's job runs in a child recycled after the job, so its time shows in the
        parent's ``cutime``/``cstime`` once the job is over.
        """
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
            return ticks / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace: float = 20.0) -> None:
        if self.alive():
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(5)
        self._fh.close()


def _wait_healthy(url: str, api: _Process, timeout: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not api.alive():
            raise RuntimeError(f"the API exited with code {api.proc.returncode}:\n{api.tail()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the API did not answer /healthz within {timeout:.0f} s:\n{api.tail()}")


def run_demo(args: argparse.Namespace) -> int:
    from layerprune.cli.follow import follow
    from layerprune.cli.progress import ProgressView
    from layerprune.cli.render import human_bytes, human_duration, summary_table
    from layerprune.client import LayerPruneClient

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    spec = demo_spec(
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        limit=args.limit,
        ppl_windows=args.ppl_windows,
        tasks=tasks,
        train_lm_head=args.train_lm_head,
    )
    if args.print_spec:
        print(json.dumps(spec, indent=2))
        return 0

    data_dir = Path(args.data_dir).expanduser().resolve()
    if data_dir.exists() and not args.keep_data:
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    api_key = "lp_demo_" + secrets.token_urlsafe(16)
    env = _child_env(data_dir, api_key)
    port = args.port or _free_port()
    url = f"http://127.0.0.1:{port}"
    cli = [sys.executable, "-m", "layerprune.cli"]

    started = time.monotonic()
    print(f"layerprune demo · data in {data_dir}")
    api = _Process(
        "api", [*cli, "serve", "--host", "127.0.0.1", "--port", str(port)], env, data_dir / "api.log"
    )
    worker: _Process | None = None
    try:
        _wait_healthy(url, api)
        print(f"API listening on {url} (log: {api.log})")
        worker = _Process("worker", [*cli, "worker"], env, data_dir / "worker.log")
        print(f"worker started (log: {worker.log})")
        with LayerPruneClient(url, api_key, timeout=60.0) as client:
            job = client.create_job(spec)
            print(
                f"submitted {job.id}: reverse-order 25% → partial healing ({args.max_steps} steps) → "
                f"evaluation ({', '.join(tasks)}, limit {args.limit}; perplexity)"
            )
            view = ProgressView()
            job_started = time.monotonic()
            try:
                job = follow(client, job.id, view)
            finally:
                view.close()
            job_seconds = time.monotonic() - job_started
            if job.status != "succeeded":
                err = job.error or {}
                print(
                    f"\njob {job.id} {job.status}: {err.get('code')}: {err.get('message')}", file=sys.stderr
                )
                if worker is not None:
                    print(f"--- last lines of {worker.log} ---\n{worker.tail()}", file=sys.stderr)
                return 1
            artifacts = client.artifacts(job.id)
            model_dir = data_dir / "model"
            client.download(job.id, model_dir)
        # The whole record next to the model, for scripts and for comparing runs.
        record = {
            **job.raw,
            "artifacts": [a.raw for a in artifacts],
            "job_seconds": round(job_seconds, 1),
            "worker_cpu_seconds": worker.cpu_seconds() if worker is not None else None,
        }
        (data_dir / "job.json").write_text(json.dumps(record, indent=2))
        print(f"\njob {job.id} succeeded in {human_duration(job_seconds)}\n")
        print(summary_table(job.result or {}, [a.raw for a in artifacts]))
        size = sum(a.size_bytes for a in artifacts)
        print(
            f"\nthe pruned, healed model ({len(artifacts)} files, {human_bytes(size)}, sha256 verified) is in\n"
            f"  {model_dir}\nload it with transformers: AutoModelForCausalLM.from_pretrained({str(model_dir)!r})"
        )
        cpu = worker.cpu_seconds() if worker is not None else None
        cpu_note = f", {cpu:.0f} CPU-seconds in the worker on {os.cpu_count()} cores" if cpu else ""
        print(
            f"total time {human_duration(time.monotonic() - started)} (job {human_duration(job_seconds)}{cpu_note})"
        )
        return 0
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "\ninterrupted: stopping the worker and the API (a running job gets 20 s to stop)",
            file=sys.stderr,
        )
        return 130
    finally:
        for proc in (worker, api):
            if proc is not None:
                proc.stop()
