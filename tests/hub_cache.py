"""A Hugging Face hub cache laid out as ``huggingface_hub`` writes it, for offline tests of hub models."""

from __future__ import annotations

import shutil
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cache_hub_model(cache: Path, repo_id: str, files_from: Path) -> Path:
    """Put the files of ``files_from`` in ``cache`` as the ``main`` snapshot of ``repo_id``."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(files_from, snapshot, dirs_exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot
