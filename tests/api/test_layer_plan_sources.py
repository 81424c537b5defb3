"""One layer-plan check for every kind of model source: a local directory, the bundled model and a
hub model whose config.json is in this host's hub cache give the same 422 (or 201) at POST time."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub.constants
import pytest

from layerprune.core.bundled import BUNDLED_LAYER_COUNTS, cache_dir
from tests.hub_cache import cache_hub_model

# Plans whose answer is the same on an 8-layer and a 30-layer model: (prune, param of the 422 or None).
PLANS = [
    ({"num_layers": 2, "iterative_step": 2}, None),
    ({"num_layers": 2, "iterative_step": 3}, "prune.iterative_step"),
    ({"ratio": 0.25, "iterative_step": 9}, "prune.iterative_step"),
    ({"metric": "manual", "layers": [1, 2], "iterative_step": 3}, "prune.iterative_step"),
    ({"num_layers": 40}, "prune.num_layers"),
    ({"num_layers": 2, "protect_layers": [31]}, "prune.protect_layers"),
]
# A multimodal hub config: the decoder's layers are the nested text model's, not the vision tower's.
HUB_STYLE = {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
             "text_config": {"model_type": "gemma3_text", "num_hidden_layers": 8},
             "vision_config": {"model_type": "siglip_vision_model", "num_hidden_layers": 27}}
HUB_ID = "acme/gemma-like"


@pytest.fixture
def sources(service_settings, tmp_path, monkeypatch) -> list[str]:
    root = service_settings.model_root_paths[0]
    local = root / "plan-local"
    local.mkdir(parents=True, exist_ok=True)
    (local / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 8}))
    files = tmp_path / "hub-files"
    files.mkdir()
    (files / "config.json").write_text(json.dumps(HUB_STYLE))
    cache_hub_model(tmp_path / "hub", HUB_ID, files)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return [str(local), HUB_ID, "bundled:smollm2-135m-instruct"]


@pytest.mark.parametrize(("prune", "param"), PLANS)
def test_every_source_gives_the_same_answer(client, new_tenant, sources, prune, param) -> None:
    _, h = new_tenant
    answers = []
    for model in sources:
        r = client.post("/v1/jobs", json={"model": model, "prune": {"metric": "reverse_order", **prune}}, headers=h)
        answers.append((r.status_code, (r.json()["error"] or {}).get("param")))
    assert answers == [(201, None) if param is None else (422, param)] * len(sources), (sources, answers)


def test_an_uncached_hub_model_is_left_to_the_worker(client, new_tenant, sources) -> None:
    _, h = new_tenant
    r = client.post("/v1/jobs", json={"model": "acme/not-cached", "prune": {"num_layers": 2, "iterative_step": 3}},
                    headers=h)
    assert r.status_code == 201, r.text  # the worker refuses it with the same error (tests/core/test_layer_plan.py)


def test_the_bundled_layer_count_is_the_converted_models(bundled_dir: Path) -> None:
    config = json.loads((bundled_dir / "config.json").read_text())
    assert bundled_dir == cache_dir() / "models" / bundled_dir.name
    assert BUNDLED_LAYER_COUNTS[bundled_dir.name] == config["num_hidden_layers"]
