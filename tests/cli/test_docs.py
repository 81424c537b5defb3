"""The README's promises that a test can hold it to, and the example specs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from layerprune.cli.remote import load_spec
from layerprune.core.spec import JobSpec
from layerprune.settings import Settings

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
    JobSpec.model_validate(load_spec(str(path)))
