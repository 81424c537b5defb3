"""Semantic checks of a job spec at POST time, cheap and torch-free.

The structure was already checked by the request model (``api.schemas.JobCreate``). Here: the
model reference (syntax, model roots, ``job:<id>`` of the same tenant and succeeded), uploaded
files named by the spec, the webhook target, qlora without CUDA workers, and — when the model's
layer count is known here — the layer plan of ``prune`` (core's ``check_layer_plan``, the check the
worker makes too) and ``finetune``. Every failure is a core ``SpecError`` (or another typed core
error) naming the field → 422.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from huggingface_hub import try_to_load_from_cache
from sqlalchemy.orm import Session
from tokenizers import Tokenizer  # the Rust tokenizer alone: no torch, no transformers

from layerprune.api.file_checks import GSM8K, PURPOSE_FORMATS, TEXTS, read_formats
from layerprune.api.schemas import JobCreate
from layerprune.core import refs
from layerprune.core.bundled import BUNDLED_LAYER_COUNTS, cache_dir
from layerprune.core.errors import (
    DatasetError,
    DeviceUnavailableError,
    RemoteCodeRefusedError,
    SpecError,
    UnsupportedArchitectureError,
)
from layerprune.core.finetune import check_finetune_spec
from layerprune.core.finetune.data import FIELDS, prompt_and_response
from layerprune.core.layer_plan import check_layer_plan, num_layers_of
from layerprune.core.sources import local_model_path, validate_model_ref
from layerprune.core.spec import DATASET_FIELDS, JobSpec
from layerprune.db.files import get_file
from layerprune.db.jobs import get_job
from layerprune.settings import Settings
from layerprune.webhooks import validate_webhook_url

# Metadata is matched by exact key and value in ``GET /v1/jobs?metadata[key]=value``; the same
# rules hold where it is stored (POST) and where it is asked for (the query), so anything that
# can be stored can be found, on both database backends.
METADATA_KEY_MAX_CHARS = 256
METADATA_VALUE_MAX_CHARS = 4096


def metadata_problem(key: str, value: str) -> tuple[str, str] | None:
    """``("key" | "value", why)`` when a metadata pair breaks the rules, else None."""
    if not key:
        return "key", "metadata keys must not be empty"
    if len(key) > METADATA_KEY_MAX_CHARS:
        return "key", f"metadata keys hold at most {METADATA_KEY_MAX_CHARS} characters"
    bad = next((c for c in key if ord(c) < 0x20 or ord(c) == 0x7F), None)
    if bad is not None:
        return "key", f"metadata keys must not contain control characters (found U+{ord(bad):04X})"
    if len(value) > METADATA_VALUE_MAX_CHARS:
        return "value", f"metadata values hold at most {METADATA_VALUE_MAX_CHARS} characters"
    if "\x00" in value:
        return "value", "metadata values must not contain a NUL character"
    return None


def validate_job_spec(session: Session, tenant: str, spec: JobCreate, settings: Settings) -> None:
    """Raise a typed core error (→ 422 naming the field) for anything a worker would refuse."""
    for key, value in spec.metadata.items():
        problem = metadata_problem(key, value)
        if problem is not None:
            raise SpecError(problem[1], param="metadata" if problem[0] == "key" else f"metadata.{key}")
    _check_model_ref(session, tenant, spec, settings)
    _check_files(session, tenant, spec)
    _check_gsm8k_train(spec)
    if spec.webhook is not None:
        validate_webhook_url(spec.webhook.url, settings)
    if spec.finetune is not None and spec.finetune.method == "qlora" and not cuda_workers(settings):
        raise DeviceUnavailableError(
            "method 'qlora' needs CUDA workers (4-bit bitsandbytes) and this service has none: "
            "use 'lora' or 'partial'", param="finetune.method")
    layers = model_layer_count(session, tenant, spec, settings)
    if layers is None:
        return  # a hub model: the worker checks once it has the config
    remaining = layers
    if spec.prune is not None:
        remaining = check_layer_plan(spec.prune, layers).remaining
    if spec.finetune is not None:
        _check_prompt_fits(spec, settings)

        ft = spec.finetune
        if ft.method == "qlora":  # CUDA was checked above for the service's workers, not this host
            ft = ft.model_copy(update={"method": "lora"})
        check_finetune_spec(ft, remaining, cuda_available=True)


def cuda_workers(settings: Settings) -> bool:
    if settings.cuda_workers is not None:
        return settings.cuda_workers
    try:
        import torch  # noqa: PLC0415 - keeps torch out of the API when LAYERPRUNE_CUDA_WORKERS is set
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _check_model_ref(session: Session, tenant: str, spec: JobSpec, settings: Settings) -> None:
    validate_model_ref(spec.model, settings.model_root_paths)
    if refs.is_job(spec.model):
        job = get_job(session, tenant, refs.job_id(spec.model))
        if job is None:
            raise SpecError(f"no job '{refs.job_id(spec.model)}' to take the model from", param="model")
        if job.status != "succeeded":
            raise SpecError(f"job {job.id} is {job.status}; only a succeeded job's output can be a model",
                            param="model")


# The format each data-set field of the spec (core's ``DATASET_FIELDS``) reads an uploaded file
# as: a key of the upload checks' format table (``api.file_checks``).
FILE_USES: dict[str, Callable[[JobSpec], str]] = {
    "finetune.dataset": lambda spec: spec.finetune.format if spec.finetune is not None else "",
    "prune.calibration.dataset": lambda spec: TEXTS,
    "evaluate.perplexity.dataset": lambda spec: TEXTS,
    "evaluate.gsm8k_train": lambda spec: GSM8K,
}
if set(FILE_USES) != set(DATASET_FIELDS):  # pragma: no cover - a data-set field without its format
    raise RuntimeError(f"FILE_USES {sorted(FILE_USES)} must cover core's DATASET_FIELDS {sorted(DATASET_FIELDS)}")


def _check_files(session: Session, tenant: str, spec: JobSpec) -> None:
    for path, file_id in spec.dataset_refs().items():
        if not refs.is_file(file_id):
            continue
        row = get_file(session, tenant, file_id)
        if row is None:
            raise SpecError(f"no uploaded file '{file_id}'", param=path)
        needed = FILE_USES[path](spec)
        outcome = read_formats(row.storage_path)
        if outcome is None:  # uploaded before the per-format checks: only its kind is known
            _check_file_kind(spec, path, file_id, row.storage_path)
            continue
        why = outcome.get(needed)
        if why is None:  # fits (or a format newer than the upload: the worker checks it)
            continue
        if path == "finetune.dataset":
            fits = [f for f in PURPOSE_FORMATS["finetune"] if f in outcome and outcome[f] is None]
            if fits:
                raise SpecError(f"file {file_id} is format {' / '.join(repr(f) for f in fits)}, not '{needed}' "
                                f"({why})", param="finetune.format")
            raise SpecError(f"file {file_id} does not fit format '{needed}': {why}", param=path)
        raise SpecError(f"file {file_id} cannot be read as calibration or perplexity text: {why}", param=path)


def _check_file_kind(spec: JobSpec, path: str, file_id: str, storage_path: str) -> None:
    if path == "finetune.dataset" and spec.finetune is not None:
        is_text = storage_path.endswith(".txt")
        if is_text != (spec.finetune.format == "text"):
            raise SpecError(f"file {file_id} is {'plain text' if is_text else 'JSONL'}; "
                            f"format '{spec.finetune.format}' does not fit it", param="finetune.format")


def _shortest_prompt(fmt: str) -> str | None:
    """The prompt of ``fmt`` around empty fields (core's own template), or None: no template."""
    row = dict.fromkeys(FIELDS.get(fmt, {}), "")
    try:
        prompt, _ = prompt_and_response(row, fmt, None)
    except (DatasetError, KeyError, TypeError, AttributeError):
        return None  # text (no prompt) or chat (the tokenizer's template)
    return prompt


def _tokenizer_file(spec: JobSpec, settings: Settings) -> Path | None:
    """The model's ``tokenizer.json`` when it is on this host (bundled and cached, or local)."""
    ref = spec.model
    if refs.is_bundled(ref):
        folder: Path | None = cache_dir() / "models" / refs.bundled_name(ref)
    elif refs.is_job(ref):
        folder = None
    else:
        folder = local_model_path(ref, settings.model_root_paths)
    if folder is None or not (folder / "tokenizer.json").is_file():
        return None
    return folder / "tokenizer.json"


@lru_cache(maxsize=8)
def _tokenizer(path: str, _mtime_ns: int) -> Any:
    return Tokenizer.from_file(path)


def _check_prompt_fits(spec: JobSpec, settings: Settings) -> None:
    """Refuse a max_seq_len that cannot hold the format's prompt template plus one response token:
    every example would be cut before its response, and the job would fail after pruning."""
    ft = spec.finetune
    if ft is None or ft.method == "none":
        return
    prompt = _shortest_prompt(ft.format)
    tokenizer_file = _tokenizer_file(spec, settings) if prompt is not None else None
    if prompt is None or tokenizer_file is None:
        return  # no template, or a model not on this host: the worker checks with the real rows
    try:
        tokenizer = _tokenizer(str(tokenizer_file), tokenizer_file.stat().st_mtime_ns)
    except Exception:  # noqa: BLE001 - a tokenizer file we cannot read here: the worker reports it
        return
    n = len(tokenizer.encode(prompt, add_special_tokens=False).ids)
    if ft.max_seq_len < n + 1:
        raise SpecError(f"max_seq_len {ft.max_seq_len} cannot hold format '{ft.format}''s prompt template "
                        f"({n} tokens with this model's tokenizer, before any instruction) plus one response "
                        f"token: use at least {n + 1}", param="finetune.max_seq_len")
def _check_gsm8k_train(spec: JobSpec) -> None:
    """Stock 'gsm8k' draws its shots from the GSM8K train split, bundled nowhere: on a service
    configured offline, a spec naming no ``gsm8k_train`` file could never run."""
    ev = spec.evaluate
    if ev is None or "gsm8k" not in ev.tasks or ev.gsm8k_train is not None:
        return
    offline = any(os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE")
                  for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    if offline:
        raise SpecError("task 'gsm8k' draws its 5 examples from the GSM8K train split, which is not bundled and "
                        "this service is offline: upload it (JSONL with 'question' and 'answer') and name it in "
                        "'evaluate.gsm8k_train', or use 'gsm8k_cot' (its examples are fixed)",
                        param=f"evaluate.tasks[{ev.tasks.index('gsm8k')}]")


def _read_config(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def model_layer_count(session: Session, tenant: str, spec: JobSpec, settings: Settings) -> int | None:
    """The model's decoder layer count when it is knowable here without a download, else None
    (a hub model: the worker makes the same check once it has the config)."""
    ref = spec.model
    if refs.is_bundled(ref):
        name = refs.bundled_name(ref)
        cached = _read_config(cache_dir() / "models" / name / "config.json")
        return num_layers_of(cached) if cached else BUNDLED_LAYER_COUNTS.get(name)
    if refs.is_job(ref):
        job = get_job(session, tenant, refs.job_id(ref))
        result = (job.result if job is not None else None) or {}
        value = result.get("num_layers_after")
        return int(value) if isinstance(value, int) else None
    local = local_model_path(ref, settings.model_root_paths)
    if local is None:
        return _hub_layer_count(ref, spec.revision)
    config = _read_config(local / "config.json")
    if config is None:
        raise SpecError(f"model directory '{ref}' has no readable config.json", param="model")
    if config.get("auto_map"):
        raise RemoteCodeRefusedError("this model needs trust_remote_code (custom code); remote code is never run",
                                     param="model")
    try:
        return num_layers_of(config)
    except UnsupportedArchitectureError:
        raise SpecError(f"model directory '{ref}' has no layer count in config.json", param="model") from None


def _hub_layer_count(repo_id: str, revision: str | None) -> int | None:
    """A hub model's layer count from its ``config.json`` in this host's hub cache (no download);
    None when it is not cached or not readable here: the worker checks once it has the config."""
    try:
        cached = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except ValueError:  # not a valid repo id for the cache: the worker reports it
        return None
    config = _read_config(Path(cached)) if isinstance(cached, str) else None
    if config is None or config.get("auto_map"):
        return None
    try:
        return num_layers_of(config)
    except UnsupportedArchitectureError:
        return None


__all__ = ["validate_job_spec", "model_layer_count", "cuda_workers", "metadata_problem"]
