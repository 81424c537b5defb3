"""The import rules of docs/style.md: core is pure ML, the API never imports the worker."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "layerprune"

FORBIDDEN = {
    "core": ("fastapi", "starlette", "sqlalchemy", "alembic", "celery", "kombu", "redis", "layerprune.api",
             "layerprune.worker", "layerprune.db", "layerprune.dispatch", "layerprune.settings"),
    "api": ("layerprune.worker",),
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_rules(package: str) -> None:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[package]):
                bad.append(f"{path.relative_to(ROOT.parent)} imports {name}")
    assert not bad, "\n".join(bad)


def test_spec_is_torch_free() -> None:
    # The API validates specs without importing torch (fast start-up, small API images).
    import subprocess
    import sys

    code = "import sys, layerprune.core.spec, layerprune.core.errors; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_api_is_torch_free() -> None:
    # The whole API process (app, routes, upload checks, spec validation) starts without torch:
    # a core module it reads for facts (task names, formats) must import torch only where a model runs.
    import subprocess
    import sys

    code = ("import sys, layerprune.api.app, layerprune.api.validation, layerprune.api.file_checks; "
            "assert 'torch' not in sys.modules, 'the API imported torch'")
    subprocess.run([sys.executable, "-c", code], check=True)
