"""The README's promises that a test can hold it to, and the example specs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from layerprune.api.schemas import JobCreate
from layerprune.cli.remote import load_spec
from layerprune.client import LayerPruneClient
from layerprune.settings import Settings
from tests.cli.conftest import KEY_A, Live

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.M | re.S)
    assert match, f"README has no section '## {title}'"
    return match.group(1)


def test_quickstart_is_exactly_two_commands() -> None:
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", _section("Quickstart"), re.M | re.S)
    assert [body.strip() for _, body in blocks] == ["bash scripts/quickstart.sh", "bash scripts/test.sh"]
    for script in ("scripts/quickstart.sh", "scripts/test.sh", "scripts/install.sh"):
        assert (ROOT / script).is_file()


def test_every_setting_is_documented() -> None:
    table = _section("Configuration")
    for name in Settings.model_fields:
        assert f"`LAYERPRUNE_{name.upper()}`" in table, f"LAYERPRUNE_{name.upper()} is not in the README"


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.*[jy][sa]*[nl]")), ids=lambda p: p.name)
def test_example_specs_are_valid(path: Path) -> None:
    if path.name.startswith("study"):
        from layerprune.studies.spec import StudySpec

        StudySpec.model_validate(load_spec(str(path)))
        return
    JobCreate.model_validate(load_spec(str(path)))  # a request body: the spec and the service fields


def test_curl_urls_with_brackets_turn_off_globbing() -> None:
    """curl reads ``[a-z]`` in a URL as a range unless ``-g``: ``metadata[key]=v`` would fail."""
    lines = [line for line in README.splitlines()
             if line.lstrip().startswith("curl ") and re.search(r"(\$U|https?://)[^\s\"]*\[", line.split(" #")[0])]
    assert lines, "README has no curl example with a bracketed query parameter"
    for line in lines:
        assert re.match(r"\s*curl -\w*g", line), f"needs -g: {line}"
    curl = shutil.which("curl")
    if curl is None:
        return
    # What the flag changes (port 9: nothing listens, so only the URL parse differs): exit 3 is
    # "URL malformed", exit 7 "could not connect".
    url = "http://127.0.0.1:9/v1/jobs?metadata[pipeline]=nightly"
    assert subprocess.run([curl, "-s", url], timeout=30).returncode == 3
    assert subprocess.run([curl, "-sg", url], timeout=30).returncode == 7


def test_python_client_snippet_runs_twice_without_a_conflict(live: Live, tmp_path: Path) -> None:
    """Run the README's client script up to its job creation twice: the second run must replay the
    same upload and the same job (it was a 409 when the upload had no idempotency key)."""
    block = re.search(r"^### The Python client\n.*?^```python\n(.*?)^```", README, re.M | re.S)
    assert block, "README has no Python client snippet"
    code = block.group(1).split("    try:\n")[0]
    data = tmp_path / "alpaca.jsonl"
    data.write_text("\n".join(json.dumps({"instruction": f"Say {w}.", "input": "", "output": w})
                              for w in ("yes", "no", "maybe")) + "\n")
    swaps = {'"http://localhost:8000"': repr(live.url), 'api_key="..."': f"api_key={KEY_A!r}",
             '"alpaca.jsonl"': repr(str(data))}
    for old, new in swaps.items():
        assert old in code, old
        code = code.replace(old, new)
    jobs = []
    for _ in range(2):
        scope: dict[str, object] = {}
        exec(compile(code + "    result = (job, data)\n", "README.md", "exec"), scope)
        jobs.append(scope["result"])
    (job1, file1), (job2, file2) = jobs
    assert file1.id == file2.id and job1.id == job2.id
    with LayerPruneClient(live.url, api_key=KEY_A) as client:
        client.cancel_job(job1.id)  # it waits on the gpu queue, which no test worker consumes
