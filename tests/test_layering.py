"""The import rules of docs/style.md, read from every import statement in the package's AST.

Every ``import`` and ``from … import`` counts, at module level or inside a function: a lazy import
is still a dependency, only a hidden one. The layers, lowest first (derived from what each
package needs; a module may import its own package and any lower layer, never a higher one or a
different package of its own rank):

    0  core            pure ML: models, pruning, healing, evaluation (no service code at all)
    1  settings, logs, processes  process configuration, structured logging, stopping child processes
    1  service_fields  what a request adds to core's spec: webhook, metadata, priority
    2  studies         a study's spec, expansion, Pareto fronts and view (pure, torch-free)
    3  db              tables, sessions, reads (``db.jobs``), migrations
    4  queue           the job queue: transitions, outbox, sweeper, Celery app, the job and study objects
    4  migrations      Alembic's environment and versions (read db; run by db.migrate from their
                       path in the package, imported by no module)
    5  metrics         Prometheus families (read from db, queue.status)
    5  storage         the artifact stores' interface and the local store
    6  storage_s3      the S3 store, built on ``storage``
    6  webhooks        delivery of terminal states (counts its outcomes on ``metrics``)
    7  artifact_store  picks the store the settings name (above both stores)
    8  worker, api     the two processes; neither imports the other (tasks are sent by name)
    9  cli             the command line, ``layerprune demo`` included
Leaves, importable from any layer because they import nothing of the package:
``layerprune`` (its ``__init__``), ``layerprune.client`` (standalone: httpx and the standard
library only, so a pipeline can vendor the file) and ``layerprune.queue.status`` (the status
enum and transition table that db.models, metrics, api and worker share: standard library only).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "layerprune"

RANK = {
    "core": 0, "settings": 1, "logs": 1, "service_fields": 1, "processes": 1, "studies": 2, "db": 3, "queue": 4, "migrations": 4,
    "metrics": 5, "storage": 5, "storage_s3": 6, "webhooks": 6, "artifact_store": 7, "worker": 8, "api": 8, "cli": 9,
}
LEAVES = {"layerprune", "layerprune.client", "layerprune.queue.status"}

# Third-party and package rules that the ranks alone do not say.
FORBIDDEN = {
    "core": ("fastapi", "starlette", "sqlalchemy", "alembic", "celery", "kombu", "redis", "pydantic_settings",
             "layerprune.settings"),
    "api": ("layerprune.worker",),
}

# The back-imports this layering replaced, spelled out: (importer prefix, imported prefix).
REMOVED_BACK_IMPORTS = [
    ("layerprune.db", "layerprune.queue.transitions"),
    ("layerprune.db", "layerprune.queue.celery_app"),
    ("layerprune.db", "layerprune.webhooks"),
    ("layerprune.queue", "layerprune.webhooks"),
    ("layerprune.webhooks", "layerprune.api"),
    ("layerprune.metrics", "layerprune.api"),
    ("layerprune.storage", "layerprune.storage_s3"),
    ("layerprune.core.architecture", "layerprune.core.removal"),
]

# Cycles between modules that predate this test (a package's __init__ and its submodules that
# read its exit codes; two evaluate modules that share helpers). No new ones: this is what keeps
# core.architecture/core.removal and the demo/cli pair (the demo is now cli.demo) apart.
KNOWN_CYCLES = [
    {"layerprune.cli", "layerprune.cli.local", "layerprune.cli.remote"},
    {"layerprune.core.evaluate.generate", "layerprune.core.evaluate.generative"},
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        name = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


MODULES = _modules()


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported name) of every import in ``path``, inside functions too; for ``from a import b``
    the name is ``a.b`` when that is a module of the package, else ``a``."""
    out: list[tuple[int, str]] = []
    package = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolve against this file's package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{module}" if module else base
            for a in node.names:
                full = f"{module}.{a.name}"
                out.append((node.lineno, full if full in MODULES else module))
    return out


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _owner(name: str) -> str | None:
    """The package module ``name`` refers to (its longest prefix that is one), or None."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        targets = {_owner(name) for _, name in _imports(path) if name.startswith("layerprune")}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def test_every_unit_has_a_rank() -> None:
    units = {_unit(m) for m in MODULES} - {"layerprune", "client", "__main__"}
    assert units <= set(RANK), f"give these a layer in RANK: {sorted(units - set(RANK))}"


def test_imports_only_go_down_the_layers() -> None:
    bad = []
    for module, path in MODULES.items():
        if module in LEAVES:
            continue
        unit = _unit(module)
        for line, name in _imports(path):
            target = _owner(name) if name.startswith("layerprune") else None
            if target is None or target in LEAVES or _unit(target) == unit:
                continue
            if RANK[_unit(target)] >= RANK[unit]:
                bad.append(f"{path.relative_to(ROOT.parent)}:{line} ({unit}, layer {RANK[unit]}) imports "
                           f"{target} (layer {RANK[_unit(target)]})")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_leaves_import_nothing_of_the_package(leaf: str) -> None:
    names = [n for _, n in _imports(MODULES[leaf]) if n.startswith("layerprune")]
    assert names == [], f"{leaf} must stay a leaf: {names}"


def test_status_module_is_standard_library_only() -> None:
    names = {n.split(".")[0] for _, n in _imports(MODULES["layerprune.queue.status"])}
    assert names <= set(sys.stdlib_module_names) | {"__future__"}, names


@pytest.mark.parametrize(("importer", "imported"), REMOVED_BACK_IMPORTS)
def test_removed_back_imports_stay_removed(importer: str, imported: str) -> None:
    bad = []
    for module, path in MODULES.items():
        if module == importer or module.startswith(importer + "."):
            for line, name in _imports(path):
                if name == imported or name.startswith(imported + "."):
                    bad.append(f"{path.relative_to(ROOT.parent)}:{line} imports {name}")
    assert not bad, "\n".join(bad)


def test_no_new_import_cycles() -> None:
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    new = [sorted(c) for c in cycles if c not in KNOWN_CYCLES]
    assert not new, f"import cycles: {new}"


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_rules(package: str) -> None:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[package]):
                bad.append(f"{path.relative_to(ROOT.parent)}:{line} imports {name}")
    assert not bad, "\n".join(bad)


def test_spec_is_torch_free() -> None:
    # The API validates specs without importing torch (fast start-up, small API images).
    code = "import sys, layerprune.core.spec, layerprune.core.errors; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_api_is_torch_free() -> None:
    # The whole API process (app, routes, upload checks, spec validation) starts without torch:
    # a core module it reads for facts (task names, formats) must import torch only where a model runs.
    code = ("import sys, layerprune.api.app, layerprune.api.validation, layerprune.api.file_checks; "
            "assert 'torch' not in sys.modules, 'the API imported torch'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_client_needs_no_server_dependencies() -> None:
    # A pipeline installs the client alone: it must import without SQLAlchemy, Celery, FastAPI…
    code = ("import sys, layerprune.client; "
            "heavy = {'sqlalchemy', 'celery', 'fastapi', 'pydantic', 'torch'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
