"""core/refs.py: the source prefixes of model and data-set references, and their parsers."""

from __future__ import annotations

from layerprune.core import refs
from layerprune.core.bundled import BUNDLED_MODELS, bundled_dataset_names
from layerprune.core.sources import JOB_REF
from layerprune.db import ids


def test_parsers_round_trip() -> None:
    assert refs.is_bundled("bundled:x") and refs.bundled_name("bundled:x") == "x" and refs.bundled_ref("x") == "bundled:x"
    assert refs.is_job("job:job_1") and refs.job_id("job:job_1") == "job_1" and refs.job_ref("job_1") == "job:job_1"
    assert refs.is_file("file_abc")
    for plain in ("HuggingFaceTB/SmolLM2-135M-Instruct", "/models/x", "./x", "files/x", "jobs:x"):
        assert not (refs.is_bundled(plain) or refs.is_job(plain) or refs.is_file(plain)), plain


def test_uploaded_file_ids_carry_the_file_prefix() -> None:
    file_id = ids.new_id(ids.FILE)
    assert refs.is_file(file_id) and ids.could_be_id(file_id, ids.FILE)
    assert not refs.is_file(ids.new_id(ids.JOB))


def test_job_refs_name_job_ids() -> None:
    job_id = ids.new_id(ids.JOB)
    assert JOB_REF.match(refs.job_ref(job_id)) and refs.job_id(refs.job_ref(job_id)) == job_id


def test_bundled_names_use_the_prefix() -> None:
    assert all(refs.is_bundled(name) for name in bundled_dataset_names())
    assert all(not refs.is_bundled(name) for name in BUNDLED_MODELS)  # table keys are bare names
