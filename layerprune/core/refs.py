"""The source prefixes a spec's model and data-set references may carry, and their parsers.

One place for the three spellings every layer reads:

- ``bundled:<name>``: a model or data set shipped with layerprune (core/bundled.py);
- ``job:<job id>``: the output model of an earlier job of the same tenant (service only);
- ``file_<id>``: an uploaded file of the same tenant (service only; the worker swaps it for a path).

Anything else is a local path or a Hugging Face hub id (core/sources.py, core/textdata.py).
Torch-free and import-free: the spec, the database layer and the API all read it.
"""

from __future__ import annotations

BUNDLED_PREFIX = "bundled:"
JOB_PREFIX = "job:"
# An uploaded file's id is ``file_`` + random characters (db/ids.py makes them with kind "file").
FILE_PREFIX = "file_"


def is_bundled(ref: str) -> bool:
    return ref.startswith(BUNDLED_PREFIX)


def bundled_name(ref: str) -> str:
    """``bundled:smollm2-135m-instruct`` → ``smollm2-135m-instruct`` (a bare name is returned as is)."""
    return ref.removeprefix(BUNDLED_PREFIX)


def bundled_ref(name: str) -> str:
    """``smollm2-135m-instruct`` → ``bundled:smollm2-135m-instruct``."""
    return BUNDLED_PREFIX + name


def is_job(ref: str) -> bool:
    return ref.startswith(JOB_PREFIX)


def job_id(ref: str) -> str:
    """``job:job_abc…`` → ``job_abc…``."""
    return ref.removeprefix(JOB_PREFIX)


def job_ref(job_id_: str) -> str:
    return JOB_PREFIX + job_id_


def is_file(ref: str) -> bool:
    """Whether ``ref`` names an uploaded file (resolved to a path by the worker, never read as one)."""
    return ref.startswith(FILE_PREFIX)
