"""Shared fixtures. Tests run offline: no hub access, real bundled model and data."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.service_fixtures import TEST_KEY_SECRET  # noqa: E402
from tests.tiny import save_tiny  # noqa: E402

# Services on a server database refuse to start without an API-key secret (db/keys.py).
os.environ.setdefault("LAYERPRUNE_KEY_SECRET", TEST_KEY_SECRET)


@pytest.fixture(scope="session")
def bundled_dir() -> Path:
    """The real SmolLM2-135M-Instruct as a Hugging Face directory (converted once, cached)."""
    from layerprune.core.bundled import bundled_model_dir

    return bundled_model_dir("bundled:smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory):
    """tiny_dirs(family) -> a saved tiny model directory of that family (built once per session)."""
    root = tmp_path_factory.mktemp("tiny")
    made: dict[str, Path] = {}

    def get(family: str = "llama") -> Path:
        if family not in made:
            made[family] = save_tiny(root / family, family)
        return made[family]

    return get


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model root holding ``tiny`` (a saved tiny Llama)."""
    root = tmp_path_factory.mktemp("models")
    save_tiny(root / "tiny", "llama")
    return root
