"""``layerprune`` commands against the live server: output people can read, exit codes scripts can trust."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from layerprune.cli import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, main
from layerprune.client import LayerPruneClient
from tests.cli.conftest import KEY_A, Live, free_port, queued_spec


def run(capsys: pytest.CaptureFixture[str], live: Live, *argv: str, key: str = KEY_A) -> tuple[int, str, str]:
    code = main([*argv, "--url", live.url, "--api-key", key])
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_submit_wait_show_list_download(
    live_worker: Live, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    live = live_worker
    spec = write(
        tmp_path, "spec.yaml", f"model: {live.model_dir}\nprune:\n  metric: reverse_order\n  num_layers: 2\n"
    )
    code, out, err = run(capsys, live, "submit", spec, "--wait", "--metadata", "case=cli")
    assert code == EXIT_OK, err
    job_id = out.split()[1].rstrip(";")
    assert job_id.startswith("job_")
    assert f"job {job_id} succeeded" in out
    assert "stage prune" in out  # events were drawn as they came
    # The before/after table
    assert "layers" in out and "8" in out and "6" in out and "-2" in out
    assert "removed layers (original numbering): 6, 7" in out
    assert f"layerprune download {job_id}" in out

    code, out, _ = run(capsys, live, "jobs", "list", "--metadata", "case=cli")
    assert code == EXIT_OK
    assert out.splitlines()[0].split() == ["ID", "STATUS", "STAGE", "PROGRESS", "CREATED", "METADATA"]
    assert job_id in out and "succeeded" in out and "case=cli" in out

    code, out, _ = run(capsys, live, "jobs", "list", "--metadata", "case=cli", "--json")
    assert code == EXIT_OK and [j["id"] for j in json.loads(out)] == [job_id]

    code, out, _ = run(capsys, live, "jobs", "show", job_id)
    assert code == EXIT_OK
    assert f"job       {job_id}" in out and "status    succeeded" in out
    assert "recent events:" in out and "state" in out

    dest = tmp_path / "out"
    code, out, err = run(capsys, live, "download", job_id, str(dest))
    assert code == EXIT_OK, err
    assert "sha256 verified" in out and (dest / "config.json").is_file()

    # A finished job cannot be cancelled: 409 → exit 1 with the server's message.
    code, _, err = run(capsys, live, "jobs", "cancel", job_id)
    assert code == EXIT_FAILED and "409" in err


def test_submit_without_wait_then_cancel(
    live: Live, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write(tmp_path, "spec.json", json.dumps(queued_spec(live)))
    code, out, _ = run(capsys, live, "submit", spec, "--json")
    assert code == EXIT_OK
    job = json.loads(out)
    assert job["status"] == "queued" and job["spec"]["prune"]["num_layers"] == 2
    code, out, _ = run(capsys, live, "jobs", "cancel", job["id"], "--wait")
    assert code == EXIT_OK and out.strip() == f"{job['id']} cancelled"


def test_waiting_on_a_job_that_gets_cancelled_exits_4(
    live: Live, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = queued_spec(live, metadata={"case": "cancel-while-waiting"})
    spec = write(tmp_path, "spec.json", json.dumps(body))
    with LayerPruneClient(live.url, KEY_A) as lp:
        job = lp.create_job(body, idempotency_key="cli-cancel-while-waiting")
        # Someone else cancels the job while `submit --wait` (same key: the same job) follows it.
        timer = threading.Timer(2.0, lp.cancel_job, args=[job.id])
        timer.start()
        try:
            code, out, err = run(
                capsys, live, "submit", spec, "--wait", "--idempotency-key", "cli-cancel-while-waiting"
            )
        finally:
            timer.join()
    assert code == EXIT_CANCELLED
    assert f"created {job.id}" in out and f"job {job.id} cancelled" in err


def test_a_failed_job_exits_1_and_says_why(
    live_worker: Live, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    live = live_worker
    # A model whose config reads fine (the API accepts it) but whose weights are garbage.
    broken = live.model_dir.parent / "broken"
    if not broken.exists():
        shutil.copytree(live.model_dir, broken)
        (broken / "model.safetensors").write_bytes(b"this is not a safetensors file")
    spec = write(tmp_path, "broken.json", json.dumps({"model": str(broken), "prune": {"num_layers": 2}}))
    code, out, err = run(capsys, live, "submit", spec, "--wait")
    assert code == EXIT_FAILED
    assert "failed:" in err


def test_bad_input_exit_codes(live: Live, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad_ratio = write(
        tmp_path, "bad.json", json.dumps({"model": str(live.model_dir), "prune": {"ratio": 1.5}})
    )
    code, _, err = run(capsys, live, "submit", bad_ratio)
    assert code == EXIT_USAGE and "param prune.ratio" in err and "422" in err

    code, _, err = run(capsys, live, "submit", str(tmp_path / "missing.json"))
    assert code == EXIT_USAGE and "cannot read spec" in err

    code, _, err = run(capsys, live, "submit", write(tmp_path, "bad.yaml", "prune: [unclosed\n"))
    assert code == EXIT_USAGE and "not valid YAML" in err

    code, _, err = run(capsys, live, "submit", write(tmp_path, "list.json", "[1, 2]"))
    assert code == EXIT_USAGE and "mapping" in err

    code, _, err = run(capsys, live, "submit", bad_ratio, "--metadata", "novalue")
    assert code == EXIT_USAGE and "KEY=VALUE" in err

    code, _, err = run(capsys, live, "jobs", "list", key="wrong-key")
    assert code == EXIT_FAILED and "401" in err

    code, _, err = run(capsys, live, "jobs", "show", "job_doesnotexist")
    assert code == EXIT_FAILED and "404" in err

    code = main(["jobs", "list", "--url", f"http://127.0.0.1:{free_port()}", "--api-key", KEY_A])
    _, err = capsys.readouterr()
    assert code == EXIT_UNREACHABLE and "cannot reach the server" in err

    with pytest.raises(SystemExit) as exc:
        main(["jobs", "frobnicate"])
    assert exc.value.code == EXIT_USAGE


def test_files_upload_list_delete(live: Live, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write(tmp_path, "rows.jsonl", '{"text": "one"}\n{"text": "two"}\n')
    code, out, err = run(capsys, live, "files", "upload", data, "--purpose", "calibration")
    assert code == EXIT_OK, err
    assert out.startswith("uploaded file_") and "rows.jsonl" in out and "purpose=calibration" in out
    file_id = out.split()[1]
    code, out, _ = run(capsys, live, "files", "list")
    assert code == EXIT_OK and file_id in out
    code, out, _ = run(capsys, live, "files", "delete", file_id)
    assert code == EXIT_OK and f"deleted {file_id}" in out
    code, _, err = run(capsys, live, "files", "upload", str(tmp_path / "nope.jsonl"), "--purpose", "finetune")
    assert code == EXIT_USAGE and "no such file" in err


def test_files_upload_with_a_format(live: Live, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write(tmp_path, "dolly.jsonl", '{"instruction": "a", "response": "b"}\n')
    code, out, err = run(capsys, live, "files", "upload", data, "--purpose", "finetune", "--format", "dolly")
    assert code == EXIT_OK, err
    assert out.startswith("uploaded file_") and "purpose=finetune" in out and "formats=dolly" in out
    code, out, err = run(capsys, live, "files", "upload", data, "--purpose", "finetune", "--format", "alpaca")
    assert code == EXIT_USAGE and "line 1" in err and "param file" in err, err
    code, out, err = run(capsys, live, "files", "upload", data, "--purpose", "finetune", "--format", "sharegpt")
    assert code == EXIT_USAGE and "param format" in err, err
    code, out, err = run(capsys, live, "files", "upload", data, "--purpose", "finetune", "--json")
    assert code == EXIT_OK and json.loads(out)["formats"] == ["dolly"], err


def test_migrate_creates_the_schema(tmp_path: Path) -> None:
    from tests.cli.conftest import REPO, live_env

    env = live_env(tmp_path / "data", tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "layerprune.cli", "migrate"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("database at revision ") and "layerprune.db" in done.stdout
    assert (tmp_path / "data" / "layerprune.db").is_file()
