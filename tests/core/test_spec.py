"""core/spec.py on its own: defaults, what the spec holds, its data-set references, the layer count."""

from __future__ import annotations

from typing import Any, get_args, get_origin

import pytest
from pydantic import BaseModel, ValidationError

from layerprune.core import refs
from layerprune.core.errors import SpecError
from layerprune.core.evaluate import TASK_NAMES
from layerprune.core.evaluate.generative import GEN_TASKS
from layerprune.core.evaluate.tasks import GROUPS
from layerprune.core.evaluate.tasks import TASKS as MC_DEFINITIONS
from layerprune.core.spec import (
    DATASET_FIELDS,
    GENERATIVE_TASKS,
    MULTIPLE_CHOICE_TASKS,
    TASKS,
    JobSpec,
    PruneSpec,
    field_at,
    resolve_layer_count,
)

FILE = "file_" + "a" * 24
EVERY_DATASET = {
    "prune": {"metric": "angular", "num_layers": 2, "calibration": {"dataset": "bundled:wikipedia-train"}},
    "finetune": {"method": "lora", "dataset": FILE, "format": "alpaca"},
    "evaluate": {"perplexity": {"dataset": "/data/eval.txt"}, "tasks": ["gsm8k"], "gsm8k_train": "file_" + "b" * 24},
}


def test_defaults_are_the_papers_recipe() -> None:
    spec = JobSpec.model_validate({"prune": {}, "finetune": {}})
    assert spec.model == "bundled:smollm2-135m-instruct"
    assert spec.prune is not None and spec.prune.metric == "reverse_order" and spec.prune.ratio == 0.25
    ft = spec.finetune
    assert ft is not None and (ft.method, ft.trainable_last_layers, ft.learning_rate, ft.epochs) == ("partial", 3, 1e-5, 2)
    assert (ft.batch_size, ft.micro_batch_size, ft.accumulation_steps, ft.warmup_steps) == (64, 4, 16, 100)


def test_the_spec_is_the_model_and_the_stages_only() -> None:
    assert set(JobSpec.model_fields) == {"model", "revision", "prune", "finetune", "evaluate"}
    for service_field in ({"metadata": {"a": "b"}}, {"priority": 1}, {"webhook": {"url": "https://x.test"}}):
        with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
            JobSpec.model_validate({"prune": {}, **service_field})


def test_from_stored_takes_cores_fields_of_a_stored_request_body() -> None:
    stored = JobSpec.model_validate({"prune": {"num_layers": 2}}).model_dump(mode="json")
    stored |= {"metadata": {"k": "v"}, "priority": 5, "webhook": {"url": "https://x.test", "secret": "s"}}
    spec = JobSpec.from_stored(stored)
    assert spec.prune is not None and spec.prune.num_layers == 2
    assert spec.model_dump(mode="json") == {k: v for k, v in stored.items() if k in JobSpec.model_fields}
    with pytest.raises(SpecError):  # the spec's own checks still run
        JobSpec.from_stored({"prune": {"num_layers": 2, "ratio": 0.5}, "priority": 1})


def test_a_stage_is_required() -> None:
    with pytest.raises(SpecError, match="at least one of prune, finetune, evaluate") as info:
        JobSpec.model_validate({"model": "bundled:smollm2-135m-instruct"})
    assert info.value.param == "prune"


def test_nul_characters_and_huge_integers_are_refused_everywhere() -> None:
    with pytest.raises(ValidationError, match="NUL"):
        JobSpec.model_validate({"prune": {"calibration": {"dataset": "a\x00b"}}})
    with pytest.raises(ValidationError, match="64-bit"):
        JobSpec.model_validate({"prune": {"seed": 2**64}})


def test_dataset_refs_name_every_data_set_field_in_stage_order() -> None:
    spec = JobSpec.model_validate(EVERY_DATASET)
    assert spec.dataset_refs() == {
        "prune.calibration.dataset": "bundled:wikipedia-train",
        "finetune.dataset": FILE,
        "evaluate.perplexity.dataset": "/data/eval.txt",
        "evaluate.gsm8k_train": "file_" + "b" * 24,
    }
    assert list(spec.dataset_refs()) == list(DATASET_FIELDS)
    # Stages that are absent name nothing; an unset optional field names nothing.
    only_eval = JobSpec.model_validate({"evaluate": {"tasks": ["arc_easy"]}})
    assert only_eval.dataset_refs() == {}
    assert JobSpec.model_validate({"prune": {}}).dataset_refs() == {
        "prune.calibration.dataset": "bundled:wikipedia-calibration"}


def _string_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted paths of every str field of the spec's models, found by walking their annotations."""
    out: list[str] = []
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        args = [info.annotation, *get_args(info.annotation)]
        nested = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if nested:
            out += _string_fields(nested[0], path + ".")
        elif str in args and get_origin(info.annotation) is not list:  # lists of names are not references
            out.append(path)
    return out


def test_every_field_that_can_name_a_data_set_is_listed() -> None:
    """A new field taking a data-set reference must join DATASET_FIELDS (files in use, the worker's
    file lookup and the pipeline's swap all read it)."""
    strings = _string_fields(JobSpec)
    named_like_data = {p for p in strings if p.endswith(".dataset") or p.endswith("_train")}
    assert named_like_data == set(DATASET_FIELDS)
    assert set(strings) - set(DATASET_FIELDS) == {"model", "revision"}  # the model is not a data set


def test_with_datasets_swaps_references_and_revalidates() -> None:
    spec = JobSpec.model_validate(EVERY_DATASET)
    swapped = spec.with_datasets({FILE: "/scratch/train.jsonl", "not-named": "/x"})
    assert swapped.finetune is not None and swapped.finetune.dataset == "/scratch/train.jsonl"
    assert swapped.dataset_refs()["evaluate.gsm8k_train"] == "file_" + "b" * 24  # not in the mapping
    assert swapped.prune == spec.prune and spec.finetune is not None and spec.finetune.dataset == FILE
    assert spec.with_datasets({}) is spec


def test_field_at_reads_stored_specs_and_tolerates_missing_parts() -> None:
    data: dict[str, Any] = {"evaluate": {"perplexity": None}, "prune": {"calibration": {"dataset": "x"}}}
    assert field_at(data, "prune.calibration.dataset") == "x"
    assert field_at(data, "evaluate.perplexity.dataset") is None
    assert field_at(data, "finetune.dataset") is None


@pytest.mark.parametrize(("prune", "layers", "expected"), [
    ({"ratio": 0.25}, 26, 6),  # floor
    ({"ratio": 0.25}, 30, 7),
    ({"ratio": 0.5}, 8, 4),
    ({"num_layers": 3}, 8, 3),
    ({"metric": "manual", "layers": [1, 5]}, 8, 2),
])
def test_resolve_layer_count(prune: dict[str, Any], layers: int, expected: int) -> None:
    assert resolve_layer_count(PruneSpec.model_validate(prune), layers) == expected


@pytest.mark.parametrize(("prune", "layers", "param"), [
    ({"ratio": 0.1}, 8, "prune.ratio"),  # removes nothing
    ({"num_layers": 8}, 8, "prune.num_layers"),  # nothing would remain
    ({"metric": "manual", "layers": [8]}, 8, "prune.layers"),
    ({"num_layers": 2, "protect_layers": [9]}, 8, "prune.protect_layers"),
    ({"num_layers": 3, "protect_layers": [0, 1, 2, 3, 4, 5]}, 8, "prune.protect_layers"),
    ({"num_layers": 1}, 1, "model"),
])
def test_resolve_layer_count_names_the_field(prune: dict[str, Any], layers: int, param: str) -> None:
    with pytest.raises(SpecError) as info:
        resolve_layer_count(PruneSpec.model_validate(prune), layers)
    assert info.value.param == param


def test_task_names_have_one_source() -> None:
    assert set(MULTIPLE_CHOICE_TASKS) | set(GENERATIVE_TASKS) == set(TASKS)
    assert not set(MULTIPLE_CHOICE_TASKS) & set(GENERATIVE_TASKS)
    assert TASK_NAMES == TASKS
    assert set(GEN_TASKS) == set(GENERATIVE_TASKS)  # every generative name has a definition
    assert all(t in MC_DEFINITIONS or t in GROUPS for t in MULTIPLE_CHOICE_TASKS)


def test_bundled_defaults_use_the_bundled_prefix() -> None:
    spec = JobSpec.model_validate({"prune": {}, "finetune": {}, "evaluate": {"perplexity": {}}})
    for ref in (spec.model, *spec.dataset_refs().values()):
        assert refs.is_bundled(ref), ref
