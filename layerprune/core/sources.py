"""Where a model comes from, and whether we are willing to load it.

A job's ``model`` is one of: ``bundled:<name>`` (converted once from a registry package),
a local directory (under the server's model roots when those are configured), ``job:<id>`` (an
earlier job's output, located by the worker's callback) or a Hugging Face id with an optional
revision. :func:`resolve_model` turns it into a local directory plus provenance (sha256 of every
input file); :func:`check_model_dir` refuses what we will not run: remote code, pickle-only
weights, anything that is not a decoder-only causal LM.

No torch or transformers at module level: the API calls :func:`validate_model_ref` per request.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import yaml

from layerprune.core import refs
from layerprune.core.bundled import BUNDLED_MODELS, bundled_model_dir
from layerprune.core.errors import (
    ModelSourceError,
    PickleOnlyRefusedError,
    RemoteCodeRefusedError,
    SpecError,
    UnsupportedArchitectureError,
)

SourceKind = Literal["bundled", "local", "hub", "job"]

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.\-]{0,95})?$")
JOB_REF = re.compile("^" + re.escape(refs.JOB_PREFIX) + r"([A-Za-z0-9_\-]{1,128})$")
# What a snapshot needs: weights as safetensors, config, tokenizer, generation config, template.
HUB_SIDE_PATTERNS = [
    "*.safetensors.index.json", "config.json", "generation_config.json",
    "tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.*", "merges.txt",
    "chat_template.*", "*.tiktoken", "spiece.model", "README.md", "LICENSE*",
]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
NETWORK_PROBE_TIMEOUT_S = 3.0


@dataclass
class ModelSource:
    ref: str
    revision: str | None
    kind: SourceKind
    local_dir: Path
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    license: str | None = None
    commit: str | None = None  # the hub commit a revision resolved to (hub sources only)

    def to_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, "revision": self.revision, "kind": self.kind, "local_dir": str(self.local_dir),
                "files": dict(self.files), "license": self.license, "commit": self.commit}


# --------------------------------------------------------------------------------------------
# Classifying a reference (cheap: no torch, no network)


def _looks_like_path(ref: str, model_roots: Sequence[Path] | None) -> bool:
    if ref.startswith(("/", "./", "../", "~")) or ref in (".", ".."):
        return True
    # Library use (no roots): an existing relative directory wins over a hub id, as in transformers.
    # The server (roots given) never reads its working directory: "org/name" there is a hub id.
    return model_roots is None and os.sep in ref and os.path.isdir(ref)


def _under(path: Path, roots: Sequence[Path]) -> bool:
    for root in roots:
        root = Path(root).expanduser().resolve()
        if path == root or root in path.parents:
            return True
    return False


def _path_refused(ref: str, exc: Exception) -> SpecError:
    # An unknown ~user, a NUL byte or an over-long name is the client's input, not our failure.
    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return SpecError(f"model path '{ref[:200]}' cannot be used: {why}", param="model")


def local_model_path(ref: str, model_roots: Sequence[Path] | None) -> Path | None:
    """The directory ``ref`` names, or None when ``ref`` is not a local path."""
    try:
        return _find_local_path(ref, model_roots)
    except (RuntimeError, ValueError, OSError) as exc:  # expanduser / resolve / stat of a bad name
        raise _path_refused(ref, exc) from None


def _is_dir(ref: str, path: Path) -> bool:
    try:
        return path.is_dir()
    except (ValueError, OSError) as exc:
        raise _path_refused(ref, exc) from None


def _find_local_path(ref: str, model_roots: Sequence[Path] | None) -> Path | None:
    if _looks_like_path(ref, model_roots):
        path = Path(ref).expanduser().resolve()
    elif model_roots:
        # A relative name that exists under a root is a path, not a hub id.
        hits = [Path(r).expanduser().resolve() / ref for r in model_roots]
        found = [h for h in hits if h.is_dir()]
        if not found:
            return None
        path = found[0].resolve()
    else:
        return None
    if model_roots is not None and not _under(path, model_roots):
        # Resolved (symlinks followed) before the check, so a link cannot escape the roots.
        raise SpecError("local model paths must lie under the server's model roots", param="model")
    return path


def validate_model_ref(ref: str, model_roots: Sequence[Path] | None) -> None:
    """Check a ``model`` reference without loading anything (SpecError, param ``model``)."""
    if not ref or ref != ref.strip():
        raise SpecError("model must be a non-empty reference without surrounding spaces", param="model")
    bad = next((c for c in ref if ord(c) < 0x20 or ord(c) == 0x7F), None)
    if bad is not None:
        raise SpecError(f"model must not contain control characters (found U+{ord(bad):04X})", param="model")
    if refs.is_bundled(ref):
        if refs.bundled_name(ref) not in BUNDLED_MODELS:
            raise SpecError(
                f"unknown bundled model '{ref}'; available: " + ", ".join(refs.bundled_ref(k) for k in BUNDLED_MODELS),
                param="model",
            )
        return
    if refs.is_job(ref):
        if not JOB_REF.match(ref):
            raise SpecError("a job reference looks like 'job:<job id>'", param="model")
        return
    path = local_model_path(ref, model_roots)
    if path is not None:
        if not _is_dir(ref, path):
            raise SpecError(f"model directory '{ref}' does not exist", param="model")
        return
    if not HUB_ID.match(ref) or ".." in ref:
        raise SpecError(
            f"'{ref}' is neither a bundled model, a job output, a local directory nor a Hugging Face id",
            param="model",
        )


# --------------------------------------------------------------------------------------------
# Resolving


def sha256_file(path: Path, chunk: int = 8 * 1024 * 1024) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_dir(local_dir: Path) -> dict[str, str]:
    """sha256 of every file under ``local_dir`` (relative posix path -> digest), hidden files skipped."""
    out: dict[str, str] = {}
    for path in sorted(local_dir.rglob("*")):
        rel = path.relative_to(local_dir)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        out[rel.as_posix()] = sha256_file(path)
    return out


def read_license(local_dir: Path) -> str | None:
    """The ``license:`` of a model card's YAML front matter, if any."""
    card = local_dir / "README.md"
    if not card.is_file():
        return None
    text = card.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return None
    end = text.find("\n---", 3)
    if end < 0:
        return None
    try:
        meta = yaml.safe_load(text[3:end]) or {}
    except yaml.YAMLError:
        return None
    value = meta.get("license") if isinstance(meta, dict) else None
    return str(value) if value else None


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hub_offline() -> bool:
    """Offline as huggingface_hub/transformers define it, read now (not at their import)."""
    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


def _hub_reachable(timeout: float = NETWORK_PROBE_TIMEOUT_S) -> bool:
    """Whether the hub endpoint accepts a TCP connection within ``timeout`` seconds.

    Name resolution has no timeout of its own, so the probe runs in a daemon thread and is
    abandoned when it takes too long: without a network the caller learns so in seconds.
    """
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    url = urlparse(endpoint)
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    ok: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                ok.append(True)
        except OSError:
            ok.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(ok and ok[0])


def weight_patterns(snapshot_dir: Path) -> list[str]:
    """The safetensors files a snapshot needs: those its index names, else ``model.safetensors``.

    Some repositories ship a second copy of the weights in another layout (Mistral's
    ``consolidated.safetensors``): downloading every ``*.safetensors`` would fetch both.
    """
    index = snapshot_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            return sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelSourceError(f"{index.name} is not a valid weight index", param="model") from exc
    return ["model.safetensors"]


def _download(repo_id: str, revision: str | None, local_only: bool) -> Path:
    from huggingface_hub import snapshot_download  # noqa: PLC0415 - keeps huggingface_hub (~1 s) out of the API

    # Two passes: config, tokenizer and weight index first, then only the weights they name.
    side = Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_SIDE_PATTERNS,
                                  local_files_only=local_only))
    weights = weight_patterns(side)
    return Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_SIDE_PATTERNS + weights,
                                  local_files_only=local_only))


def _snapshot(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError  # noqa: PLC0415 - keeps huggingface_hub out of the API

    if hub_offline():
        # Offline: a copy already in the local cache is fine; anything else fails at once.
        try:
            return _download(repo_id, revision, local_only=True)
        except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError) as exc:
            raise ModelSourceError(
                f"cannot fetch '{repo_id}' from the Hugging Face hub: this machine is offline "
                "(HF_HUB_OFFLINE is set) and the model is not in the local cache",
                param="model",
            ) from exc
    if not _hub_reachable():
        raise ModelSourceError(
            f"cannot fetch '{repo_id}': the Hugging Face hub is unreachable from this machine (no network)",
            param="model",
        )
    try:
        return _download(repo_id, revision, local_only=False)
    except HfHubHTTPError as exc:
        raise ModelSourceError(f"cannot fetch '{repo_id}' (revision {revision}): {exc}", param="model") from exc
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"cannot fetch '{repo_id}': {exc}", param="model") from exc


def resolve_model(ref: str, revision: str | None = None, *, model_roots: Sequence[Path] | None = None,
                  job_dir: Callable[[str], Path] | None = None) -> ModelSource:
    """Find ``ref`` on disk (downloading from the hub if needed) and hash its files."""
    validate_model_ref(ref, model_roots)
    license_: str | None = None
    kind: SourceKind
    if refs.is_bundled(ref):
        kind = "bundled"
        local_dir = bundled_model_dir(ref)
        license_ = BUNDLED_MODELS[refs.bundled_name(ref)].get("license")
    elif refs.is_job(ref):
        kind = "job"
        if job_dir is None:
            raise ModelSourceError("job outputs can only be used inside the service", param="model")
        local_dir = Path(job_dir(refs.job_id(ref)))
    else:
        path = local_model_path(ref, model_roots)
        if path is not None:
            kind, local_dir = "local", path
        else:
            kind, local_dir = "hub", _snapshot(ref, revision)
    if not local_dir.is_dir():
        raise ModelSourceError(f"model '{ref}' not found (no directory {local_dir})", param="model")
    license_ = license_ or read_license(local_dir) or _license_from_record(local_dir)
    # A hub snapshot lives in .../snapshots/<commit sha>: the exact revision that was used.
    commit = local_dir.name if kind == "hub" and re.fullmatch(r"[0-9a-f]{40}", local_dir.name) else None
    return ModelSource(ref=ref, revision=revision, kind=kind, local_dir=local_dir, files=hash_dir(local_dir),
                       license=license_, commit=commit)


def _license_from_record(local_dir: Path) -> str | None:
    record = local_dir / "layerprune.json"
    if record.is_file():
        try:
            value = json.loads(record.read_text()).get("license")
        except (ValueError, AttributeError):
            return None
        return str(value) if value else None
    return None


# --------------------------------------------------------------------------------------------
# What we refuse to load


def _auto_map_class(raw: dict[str, Any]) -> str | None:
    for cfg in (raw, raw.get("text_config") or {}):
        auto_map = cfg.get("auto_map") if isinstance(cfg, dict) else None
        if auto_map:
            archs = raw.get("architectures") or []
            if archs:
                return str(archs[0])
            target = auto_map.get("AutoModelForCausalLM") or next(iter(auto_map.values()))
            return str(target[0] if isinstance(target, list) else target)
    return None


def check_model_dir(local_dir: Path):  # type: ignore[no-untyped-def]  # -> transformers.PretrainedConfig
    """Refuse a model directory we will not load; return its config otherwise.

    Errors (param ``model``): ModelSourceError (no directory, no config, no weights),
    RemoteCodeRefusedError (``auto_map``: needs trust_remote_code), PickleOnlyRefusedError
    (``.bin``/``.pt`` without safetensors), UnsupportedArchitectureError (unknown to
    transformers, encoder or encoder-decoder, or no list of decoder blocks).
    """
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise ModelSourceError(f"model directory {local_dir} does not exist", param="model")
    cfg_path = local_dir / "config.json"
    if not cfg_path.is_file():
        raise ModelSourceError(f"no config.json in {local_dir}: not a Hugging Face model directory", param="model")
    try:
        raw = json.loads(cfg_path.read_text())
    except ValueError as exc:
        raise ModelSourceError(f"config.json is not valid JSON: {exc}", param="model") from exc
    remote = _auto_map_class(raw)
    if remote:
        raise RemoteCodeRefusedError(
            f"{remote} needs trust_remote_code (custom code shipped with the model); layerprune never runs "
            "remote code: use an architecture that transformers implements natively",
            param="model",
        )
    names = [p.name for p in local_dir.iterdir() if p.is_file()]
    if not any(n.endswith(".safetensors") for n in names):
        pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
        if pickles:
            raise PickleOnlyRefusedError(
                f"only pickle weights ({', '.join(pickles[:3])}) and no .safetensors: pickle files can run "
                "code when loaded; convert the checkpoint to safetensors",
                param="model",
            )
        raise ModelSourceError(f"no safetensors weights in {local_dir}", param="model")

    from transformers import AutoConfig  # noqa: PLC0415 - keeps torch out of the API
    from transformers.models.auto.modeling_auto import (  # noqa: PLC0415 - keeps torch out of the API
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = raw.get("model_type")
    try:
        config = AutoConfig.from_pretrained(local_dir, trust_remote_code=False)
    except (ValueError, KeyError, OSError) as exc:
        raise UnsupportedArchitectureError(
            f"unsupported architecture (model_type {model_type!r}): transformers cannot read this config",
            param="model",
        ) from exc
    arch = (raw.get("architectures") or [None])[0]
    # Encoders such as BERT have a causal-LM head class too; having a masked-LM class marks them.
    if (config.is_encoder_decoder or config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
            or config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES):
        raise UnsupportedArchitectureError(
            f"unsupported architecture {arch or config.model_type}: not a decoder-only causal LM", param="model"
        )
    from layerprune.core.architecture import find_decoder_parts, meta_model  # noqa: PLC0415 - keeps torch out of the API

    try:
        find_decoder_parts(meta_model(config))
    except UnsupportedArchitectureError:
        raise
    except Exception as exc:  # noqa: BLE001 - building a structure-only model must not crash the caller
        raise UnsupportedArchitectureError(
            f"unsupported architecture {arch or config.model_type}: cannot build it ({type(exc).__name__})",
            param="model",
        ) from exc
    return config
