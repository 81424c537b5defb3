"""``layerprune demo``: the whole product on one machine, with nothing installed but Python packages.

It starts the API and one worker as subprocesses on the embedded default (SQLite and the
filesystem Celery transport under a fresh data directory) and submits, through the HTTP API, two
jobs on the bundled SmolLM2-135M-Instruct that each remove 25% of its layers (7 of 30):

- ``recommended``: the recipe bench/quality.py finds best on this model — the most similar run of
  layers (angular distance) replaced by a least-squares linear map folded into the block before
  it, then a short distillation heal of every layer after the cut (the last 11) against the
  unpruned model on plain Wikipedia text;
- ``paper``: Lu et al. 2024's recipe — the last layers removed (reverse order), the last 3 layers
  healed with next-token loss on instructions — on the same kind of budget, for comparison.

Each job evaluates the base model and its result (perplexity, zero-shot accuracy, and the greedy
answer to one fixed question). The demo follows them with a live progress bar, downloads the
recommended model (sha256-verified) and prints one table — dense, recommended, paper — and the
three answers. Both processes are stopped at the end.

Step counts and evaluation limits are capped so both jobs fit in minutes on two CPU cores; the
full recipes are one spec file away (examples/angular-linear-distill.yaml,
examples/paper-recipe.yaml).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from layerprune.cli.follow import follow
from layerprune.cli.progress import ProgressView
from layerprune.cli.render import comparison_table, human_bytes, human_duration
from layerprune.client import LayerPruneClient
from layerprune.processes import stop_group

DEFAULT_TASKS = ("arc_easy", "piqa", "hellaswag")
RECIPES = ("recommended", "paper")
RECOMMENDED_TRAINABLE_LAYERS = 11
# The question each model answers before and after: a reader sees sense or garbage at a glance.
SAMPLE_PROMPT = "What is the capital of France?"
# Sized for two CPU cores (README: measured there): both jobs together stay well under ten minutes.
DEMO_DEFAULTS = {"max_steps": 20, "batch_size": 4, "learning_rate": 2e-4, "limit": 40, "ppl_windows": 16}
# The options that size the jobs: (demo_spec keyword, type, help); their defaults are DEMO_DEFAULTS.
_SIZE_OPTIONS = (
    ("max_steps", int, "healing optimizer steps (each recipe)"),
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
    p.add_argument("--recipes", default=",".join(RECIPES),
                   help="which recipes to run, comma-separated, the first is downloaded: recommended (angular "
                        "+ linear replacement + distillation) and/or paper (reverse order + LM healing) "
                        "(default %(default)s)")
    for key, kind, text in _SIZE_OPTIONS:
        p.add_argument("--" + key.replace("_", "-"), type=kind, default=DEMO_DEFAULTS[key],
                       help=f"{text} (default %(default)s)")
    p.add_argument(
        "--train-lm-head",
        action="store_true",
        help="paper recipe: heal lm_head too, as the paper does; SmolLM2 ties it to the embeddings, so this "
        "unties them and adds 28M parameters",
    )
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help="evaluation tasks (default %(default)s)")
    p.add_argument("--prompt", default=SAMPLE_PROMPT, help="the question every model answers (default %(default)r)")
    p.add_argument("--print-spec", action="store_true", help="print the job specs the demo submits and exit")


def demo_spec(
    recipe: str = "recommended",
    *,
    max_steps: int = DEMO_DEFAULTS["max_steps"],
    batch_size: int = DEMO_DEFAULTS["batch_size"],
    learning_rate: float = DEMO_DEFAULTS["learning_rate"],
    limit: int = DEMO_DEFAULTS["limit"],
    ppl_windows: int = DEMO_DEFAULTS["ppl_windows"],
    tasks: tuple[str, ...] | list[str] = DEFAULT_TASKS,
    train_lm_head: bool = False,
    prompt: str = SAMPLE_PROMPT,
    compare_base: bool = True,
) -> dict[str, Any]:
    """One of the demo's recipes on the bundled model, capped to fit a laptop-sized run.

    ``paper`` departs from the paper in one way by default: SmolLM2 ties lm_head to its input
    embeddings, and healing lm_head would untie them and store a second 28M-parameter matrix, so
    the pruned model would end up larger than the original. It heals the final norm and the last
    3 layers instead (``train_lm_head=True`` gives the paper's exact trainable set).
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
    heal: dict[str, Any] = {
        "method": "partial",
        "trainable_last_layers": 3,
        "max_steps": max_steps,
        "batch_size": batch_size,
        "micro_batch_size": min(4, batch_size),
        "learning_rate": learning_rate,
        "warmup_steps": max(1, max_steps // 10),
        "max_seq_len": 256,
        "seed": 42,
    }
    if recipe == "recommended":
        prune: dict[str, Any] = {"metric": "angular", "num_layers": 7,
                                 "calibration": {"num_samples": 32, "seq_len": 128},
                                 "replace": {"method": "linear", "objective": "lstsq"}}
        # Distillation needs no labels: plain text, packed, against the unpruned model's logits.
        # The angular run on this model is layers 12-18, so the last 11 of the 23 left are every
        # layer after the cut: healing them all, not the last 3, is what met the quality goals in
        # bench/quality.py (angular-lstsq-distill-k11) at about 1.2x the cost per step.
        heal.update({"trainable_last_layers": RECOMMENDED_TRAINABLE_LAYERS, "train_lm_head": False,
                     "dataset": "bundled:wikipedia-train", "format": "text", "packing": True,
                     "objective": "distill"})
    else:
        prune = {"metric": "reverse_order", "num_layers": 7}
        heal.update({"train_lm_head": train_lm_head, "dataset": "bundled:instructions", "format": "alpaca"})
    return {
        "model": "bundled:smollm2-135m-instruct",
        "prune": prune,
        "finetune": heal,
        "evaluate": {
            "perplexity": {"dataset": "bundled:wikipedia-eval", "seq_len": 256, "max_windows": ppl_windows},
            "tasks": list(tasks),
            "limit": limit,
            "compare_base": compare_base,
            "samples": {"prompts": [prompt], "max_new_tokens": 32},
        },
        "metadata": {"source": "layerprune-demo", "recipe": recipe},
    }


def describe(recipe: str, spec: dict[str, Any]) -> str:
    """One line saying what a demo job does."""
    heal = spec["finetune"]
    if recipe == "recommended":
        return (f"angular block of 7 layers → linear replacement (lstsq) → distillation heal of the last "
                f"{heal['trainable_last_layers']} layers ({heal['max_steps']} steps × {heal['batch_size']})")
    return f"reverse order, 7 layers → LM-loss heal on instructions ({heal['max_steps']} steps × {heal['batch_size']})"


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
        stop_group(self.proc, grace)
        self._fh.close()


def _wait_healthy(url: str, api: _Process, timeout: float = 120.0) -> None:
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
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = [r for r in recipes if r not in RECIPES]
    if not recipes or unknown:
        print(f"error: --recipes: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(RECIPES)}",
              file=sys.stderr)
        return 2
    # The base model is evaluated once, by the first job; the others compare against its figures.
    specs = {r: demo_spec(r, max_steps=args.max_steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                          limit=args.limit, ppl_windows=args.ppl_windows, tasks=tasks,
                          train_lm_head=args.train_lm_head, prompt=args.prompt, compare_base=i == 0)
             for i, r in enumerate(recipes)}
    if args.print_spec:
        print(json.dumps(specs if len(specs) > 1 else specs[recipes[0]], indent=2))
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
        print(f"worker started (log: {worker.log}); dashboard: {url}/dashboard")
        with LayerPruneClient(url, api_key, timeout=60.0) as client:
            # All submitted at once: the worker takes them in order while we follow each.
            jobs = {r: client.create_job(specs[r]) for r in recipes}
            finished = {}
            job_seconds: dict[str, float] = {}
            for recipe, job in jobs.items():
                print(f"\n[{recipe}] {job.id}: {describe(recipe, specs[recipe])} → evaluation "
                      f"({', '.join(tasks)}, limit {args.limit}; perplexity; the answer to {args.prompt!r})")
                view = ProgressView()
                job_started = time.monotonic()
                try:
                    job = follow(client, job.id, view)
                finally:
                    view.close()
                job_seconds[recipe] = time.monotonic() - job_started
                if job.status != "succeeded":
                    err = job.error or {}
                    print(f"\njob {job.id} {job.status}: {err.get('code')}: {err.get('message')}", file=sys.stderr)
                    if worker is not None:
                        print(f"--- last lines of {worker.log} ---\n{worker.tail()}", file=sys.stderr)
                    return 1
                finished[recipe] = job
                print(f"[{recipe}] succeeded in {human_duration(job_seconds[recipe])}")
            first = recipes[0]
            artifacts = client.artifacts(finished[first].id)
            model_dir = data_dir / "model"
            client.download(finished[first].id, model_dir)
        # The whole record next to the model, for scripts and for comparing runs.
        record = {
            "jobs": {r: {**finished[r].raw, "job_seconds": round(job_seconds[r], 1)} for r in recipes},
            "artifacts": [a.raw for a in artifacts],
            "worker_cpu_seconds": worker.cpu_seconds() if worker is not None else None,
        }
        (data_dir / "job.json").write_text(json.dumps(record, indent=2))
        print()
        print(comparison_table([(r, finished[r].result or {}) for r in recipes]))
        size = sum(a.size_bytes for a in artifacts)
        print(
            f"\nthe {first} model ({len(artifacts)} files, {human_bytes(size)}, sha256 verified) is in\n"
            f"  {model_dir}\nload it with transformers: AutoModelForCausalLM.from_pretrained({str(model_dir)!r})"
        )
        cpu = worker.cpu_seconds() if worker is not None else None
        cpu_note = f", {cpu:.0f} CPU-seconds in the worker on {os.cpu_count()} cores" if cpu else ""
        per_job = ", ".join(f"{r} {human_duration(job_seconds[r])}" for r in recipes)
        print(f"total time {human_duration(time.monotonic() - started)} (jobs: {per_job}{cpu_note})")
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
