"""A study end to end on the embedded default: ``layerprune serve`` and ``layerprune worker`` as real
processes on SQLite + the filesystem queue, through the Python client and the CLI."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from layerprune.client import LayerPruneClient, StudyCancelled
from tests.cli.conftest import KEY_A, KEY_B, REPO, Proc, free_port, live_env
from tests.studies.live import Receiver, check_finished_study, small_study


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    root = tmp_path_factory.mktemp("study-live")
    data_dir = root / "data"
    data_dir.mkdir()
    (root / "models").mkdir()
    env = {**live_env(data_dir, root / "models"), "LAYERPRUNE_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
           "LAYERPRUNE_WEBHOOK_INTERVAL_SECONDS": "0.5"}
    port = free_port()
    api = Proc(["serve", "--host", "127.0.0.1", "--port", str(port)], env, root / "api.log")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert api.alive() and time.monotonic() < deadline, api.tail()
        time.sleep(0.2)
    worker = Proc(["worker", "--queues", "gpu,cpu"], env, root / "worker.log")
    yield url, env, api, worker
    worker.stop()
    api.stop()


def test_study_end_to_end_with_the_cli(embedded, tmp_path):
    url, env, api, worker = embedded
    hook = Receiver()
    try:
        spec_file = tmp_path / "study.json"
        import json

        spec_file.write_text(json.dumps(small_study(hook.url)))
        cli_env = {**env, "LAYERPRUNE_URL": url, "LAYERPRUNE_API_KEY": KEY_A}
        run = subprocess.run([sys.executable, "-m", "layerprune.cli", "study", str(spec_file), "--wait"],
                             env=cli_env, cwd=REPO, capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:] + worker.tail(60)
        assert "recommended:" in run.stdout and "Pareto" in run.stdout
        with LayerPruneClient(url, KEY_A) as lp:
            study = lp.list_studies(limit=1).data[0]
            events = {c["job_id"]: lp.events(c["job_id"]) for c in study.candidates}
            events[study.baseline["job_id"]] = lp.events(study.baseline["job_id"])
            check_finished_study(study.raw, events)
            shown = subprocess.run([sys.executable, "-m", "layerprune.cli", "studies", "show", study.id],
                                   env=cli_env, cwd=REPO, capture_output=True, text=True, timeout=60)
            assert shown.returncode == 0 and "taylor · 20%" in shown.stdout
        with LayerPruneClient(url, KEY_B) as other:
            with pytest.raises(Exception) as exc:
                other.get_study(study.id)
            assert getattr(exc.value, "status", None) == 404
        deadline = time.monotonic() + 30
        while "study.succeeded" not in hook.types() and time.monotonic() < deadline:
            time.sleep(0.3)
        assert hook.types() == ["study.succeeded"]
        body = hook.received[0]["body"]
        assert body["data"]["id"] == study.id and body["data"]["spec"]["webhook"]["secret"] == "***"
        from layerprune.webhooks import verify

        assert verify("whsec_c3R1ZHktc2VjcmV0", hook.received[0]["headers"],
                      json.dumps(body, separators=(",", ":"), sort_keys=True).encode())
    finally:
        hook.close()


def test_cancel_study_through_the_client(embedded):
    url, *_ = embedded
    body = small_study()
    body["axes"]["heal_methods"] = ["partial"]  # healing: long enough to be cancelled first
    body["finetune"] = {"max_steps": 50, "batch_size": 2, "micro_batch_size": 1, "warmup_steps": 0,
                        "dataset": "bundled:wikipedia-train", "format": "text"}
    with LayerPruneClient(url, KEY_A) as lp:
        study = lp.create_study(body)
        cancelled = lp.cancel_study(study.id)
        assert cancelled.raw["cancel_requested_at"] is not None
        with pytest.raises(StudyCancelled) as exc:
            lp.wait_study(study.id, poll_interval=0.5, timeout=120)
        final = exc.value.study
        assert final.status == "cancelled"
        assert {c["status"] for c in final.candidates} == {"cancelled"}
        assert final.baseline["status"] in ("cancelled", "succeeded")


