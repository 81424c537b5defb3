"""``layerprune jobs show J | head``: a reader that goes away ends the command quietly (exit 141,
as a tool killed by SIGPIPE), never with a BrokenPipeError traceback. Real processes, real pipes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from layerprune.cli import EXIT_BROKEN_PIPE
from layerprune.client import LayerPruneClient
from tests.cli.conftest import KEY_A, Live, queued_spec


def _into_closed_pipe(live: Live, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI with its stdout on a pipe whose reader has already gone: every write fails."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "layerprune.cli", *argv, "--url", live.url, "--api-key", KEY_A],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, env=live.env, timeout=120)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("argv", [("jobs", "show", "{job}"), ("jobs", "show", "{job}", "--json"), ("jobs", "list")])
def test_a_closed_pipe_ends_the_command_quietly(live: Live, argv: tuple[str, ...]) -> None:
    with LayerPruneClient(live.url, api_key=KEY_A) as client:
        job = client.create_job(queued_spec(live))
    args = [a.format(job=job.id) for a in argv]
    done = _into_closed_pipe(live, *args)
    with LayerPruneClient(live.url, api_key=KEY_A) as client:
        client.cancel_job(job.id)  # queued on the gpu queue, which no test worker consumes
    assert done.returncode == EXIT_BROKEN_PIPE, done.stderr
    assert done.stderr == ""  # no traceback, no "Exception ignored" at interpreter exit


def test_head_reads_the_first_line_and_the_command_ends_cleanly(live: Live) -> None:
    with LayerPruneClient(live.url, api_key=KEY_A) as client:
        job = client.create_job(queued_spec(live))
    cmd = (f"{sys.executable} -m layerprune.cli jobs show {job.id} --url {live.url} --api-key {KEY_A} | head -n 1;"
           " echo \"exit=${PIPESTATUS[0]}\"")
    done = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=live.env, timeout=120)
    with LayerPruneClient(live.url, api_key=KEY_A) as client:
        client.cancel_job(job.id)
    first, status = done.stdout.splitlines()
    assert first.strip()
    assert status in ("exit=0", f"exit={EXIT_BROKEN_PIPE}")  # 0 when the output fit before head left
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr
