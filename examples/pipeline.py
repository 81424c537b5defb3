"""A retraining pipeline step: upload data, prune + heal, wait, check quality, download.

    LAYERPRUNE_URL=http://localhost:8000 LAYERPRUNE_API_KEY=... python examples/pipeline.py data.jsonl out/

``data.jsonl`` holds Alpaca rows ({"instruction", "input", "output"}). The job is created with
an idempotency key derived from the run, so a crashed and restarted pipeline re-attaches to the
job it already started instead of paying for a second one.
"""

from __future__ import annotations

import sys

from layerprune.client import JobFailed, LayerPruneAPIError, LayerPruneClient


def main(data_path: str, out_dir: str, run_id: str = "nightly-1") -> int:
    with LayerPruneClient(timeout=60, max_retries=5) as lp:  # LAYERPRUNE_URL / LAYERPRUNE_API_KEY
        data = lp.upload_file(data_path, purpose="finetune")
        print(f"uploaded {data.id} ({data.num_records} records)")
        spec = {
            "model": "bundled:smollm2-135m-instruct",
            "prune": {"metric": "reverse_order", "ratio": 0.25},
            "finetune": {"method": "partial", "dataset": data.id, "format": "alpaca", "max_steps": 100},
            "evaluate": {
                "perplexity": {"dataset": "bundled:wikipedia-eval"},
                "tasks": ["arc_easy"],
                "limit": 200,
            },
            "metadata": {"pipeline": "nightly-retrain", "run": run_id},
        }
        try:
            job = lp.create_job(spec, idempotency_key=f"nightly-retrain-{run_id}")
        except LayerPruneAPIError as exc:
            print(f"spec refused: {exc.code} at {exc.param}: {exc.message}", file=sys.stderr)
            return 2

        def show(j):  # called whenever status, stage or progress changes
            print(f"  {j.status:<10} {j.stage or '':<9} {100 * j.progress:5.1f}%")

        try:
            job = lp.wait(job.id, on_progress=show, poll_interval=5, timeout=6 * 3600)
        except JobFailed as exc:
            print(f"job {exc.job.id} {exc.job.status}: {exc.code}: {exc.message}", file=sys.stderr)
            return 1

        after = job.result["metrics"].get("after", {})
        print("removed layers:", job.result["removed_layers"], "metrics after:", after)
        paths = lp.download(job.id, out_dir)  # resumable, every file's sha256 checked
        print(f"{len(paths)} files in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
